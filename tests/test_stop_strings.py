"""Completions end at the model's EOS and at the template's stop string (``</answer>`` for
R1-Zero): a real base model would otherwise go on after its answer, and the format reward wants
nothing after ``</answer>``. Checked with the real Qwen2.5 tokenizer on a random-weight model."""

from __future__ import annotations

import pytest
import torch

from r1flow.engine import assemble_rollouts, make_engine, stop_cut
from r1flow.modeling import load_model
from r1flow.templates import stop_strings

QWEN = "Qwen/Qwen2.5-Math-1.5B"


@pytest.fixture(scope="module")
def qwen(hub_cache):
    model, tok = load_model(QWEN)
    return model.eval(), tok


def test_the_cut_keeps_the_token_that_completes_the_stop_string(qwen):
    _, tok = qwen
    ids = tok("<think> 2 + 3 = 5 </think> <answer> 5 </answer>\nUser: and 7?")["input_ids"]  # ">\n" is one token
    cut = stop_cut(ids, tok, stop_strings("r1_zero"))
    assert tok.decode(ids[:cut]).endswith("</answer>\n") and "</answer>" not in tok.decode(ids[:cut - 1])
    assert stop_cut(ids, tok, ()) is None and stop_cut(ids[:5], tok, ("</answer>",)) is None


def test_rollouts_are_cut_masked_and_marked_stop(qwen):
    _, tok = qwen
    texts = ["<think> 1 </think> <answer> 1 </answer> User: again", "<think> no answer yet: still thinking it over and over, at some length, at quite some length"]
    rows = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    completions = torch.full((2, width), tok.pad_token_id)
    for r, ids in enumerate(rows):
        completions[r, :len(ids)] = torch.tensor(ids)
    prompt = (torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long))
    out = assemble_rollouts([prompt], [completions], [0, 1], tok, tok.pad_token_id, [tok.eos_token_id],
                            ("</answer>",))
    assert out.texts == ["<think> 1 </think> <answer> 1 </answer>", texts[1]]  # the longest row: no padding
    assert out.finish_reasons == ["stop", "length"]
    kept = int(out.completion_lengths[0])
    assert tok.decode(out.completion_ids[0, :kept]) == out.texts[0]
    assert (out.completion_ids[0, kept:] == tok.pad_token_id).all()


@pytest.mark.parametrize("kind", ["torch", "hf"])
def test_engines_stop_at_a_stop_string(qwen, kind):
    """Seeded sampling from a random-weight model on the real vocabulary: pick a piece of what it
    writes as the stop string; the same call with it stops right there."""
    model, tok = qwen
    engine = make_engine(kind, model, tok, batch_size=4)
    call = dict(n=1, max_new_tokens=12, temperature=1.0, seed=7)
    free = engine.generate(["What is 2+3?"], **call)
    ids = free.completion_ids[0, :int(free.completion_lengths[0])].tolist()
    full = tok.decode(ids, skip_special_tokens=True)
    stop = next(piece for piece in (tok.decode(ids[i:i + 2]) for i in range(3, len(ids) - 2))
                if piece.strip() and "\ufffd" not in piece and piece in full)  # whole characters only
    stopped = engine.generate(["What is 2+3?"], **call, stop=(stop,))
    assert stopped.finish_reasons == ["stop"] and stopped.texts[0].endswith(stop)
    assert stopped.texts[0] == tok.decode(ids[:stop_cut(ids, tok, (stop,))], skip_special_tokens=True)
    assert int(stopped.completion_lengths[0]) < len(ids)


def test_the_chat_template_renders_through_the_models_own(hub_cache):
    from r1flow.loading import load_tokenizer
    from r1flow.templates import render_prompt

    r1 = load_tokenizer("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B")
    text = render_prompt("What is 2+3?", "chat", r1)
    assert text.startswith("<｜begin▁of▁sentence｜><｜User｜>What is 2+3?\nPlease reason step by step")
    assert text.endswith("<｜Assistant｜>")
    assert r1(text, add_special_tokens=False)["input_ids"].count(r1.bos_token_id) == 1  # no second BOS
    with pytest.raises(ValueError, match="no chat template|has none"):
        render_prompt("What is 2+3?", "chat", load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct"))


def test_prompts_start_with_bos_where_the_tokenizer_adds_one_and_never_twice(hub_cache):
    """DeepSeek-R1-Distill's tokenizer adds its BOS (as Llama 3's does): a plain template gets it
    once, a chat template that writes it keeps one; Qwen2.5's has none and gets none."""
    from r1flow.engine import encode_prompts
    from r1flow.loading import load_tokenizer
    from r1flow.templates import render_prompt

    r1 = load_tokenizer("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B")
    plain, chat = encode_prompts(r1, [render_prompt("2+3?", "r1"), render_prompt("2+3?", "chat", r1)])
    assert plain[0] == r1.bos_token_id and plain[1] != r1.bos_token_id
    assert chat[0] == r1.bos_token_id and chat[1] != r1.bos_token_id
    qwen = load_tokenizer("Qwen/Qwen2.5-Math-1.5B")
    assert encode_prompts(qwen, ["User: 2+3?"]) == [qwen("User: 2+3?", add_special_tokens=False)["input_ids"]]
