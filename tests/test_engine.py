"""The HF generation engine on tiny CPU models: shapes, masks, finish reasons, seeding, padding."""

from __future__ import annotations

import pytest
import torch

from r1flow.engine import HFEngine, completion_mask_and_stops, left_pad, make_engine
from r1flow.modeling import ModelArch, build_model, train_tokenizer

ARCH = ModelArch(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
PROMPTS = ["Compute 1 + 2.", "Compute 12 + 7 - 3 and show the steps.", "Hi"]



@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["Compute 12 + 7 - 3. <think> 12 plus 7 is 19. </think> <answer> 16 </answer>"] * 20, 300)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(ARCH, tokenizer, seed=0)


@pytest.fixture(scope="module")
def uniform_model(tokenizer):
    """A model whose next-token distribution is exactly uniform (final norm zeroed: all logits 0),
    so EOS comes with probability 1/|V| per token and both finish reasons occur."""
    m = build_model(ARCH, tokenizer, seed=0)
    with torch.no_grad():
        m.model.norm.weight.zero_()
    return m


def test_completion_mask_hand_values():
    ids = torch.tensor([[5, 0, 7, 0], [5, 6, 7, 8], [0, 0, 0, 0]])  # eos = 0
    mask, stopped = completion_mask_and_stops(ids, [0])
    # row 0: up to and including the first EOS (index 1); row 1: no EOS; row 2: EOS first.
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert stopped.tolist() == [True, False, True]


def test_left_pad_hand_values():
    ids, mask = left_pad([[3, 4], [5], [6, 7, 8]], pad_id=0)
    assert ids.tolist() == [[0, 3, 4], [0, 0, 5], [6, 7, 8]]
    assert mask.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]


def test_shapes_masks_and_finish_reasons(uniform_model, tokenizer):
    engine = HFEngine(uniform_model, tokenizer, batch_size=10)  # 10 does not divide 3 x 8 rows
    n, max_new = 8, 48
    out = engine.generate(PROMPTS, n=n, max_new_tokens=max_new, temperature=1.0, seed=3)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    rows = len(PROMPTS) * n
    assert out.prompt_ids.shape == out.prompt_mask.shape == (rows, max(map(len, encoded)))
    assert out.completion_ids.shape == out.completion_mask.shape
    assert out.completion_ids.shape[0] == rows and out.completion_ids.shape[1] <= max_new
    assert out.prompt_index == [i for i in range(len(PROMPTS)) for _ in range(n)]
    eos = tokenizer.eos_token_id
    for j in range(rows):
        mask = out.prompt_mask[j]
        real = out.prompt_ids[j][mask.bool()].tolist()
        assert real == encoded[out.prompt_index[j]]
        assert mask.tolist() == sorted(mask.tolist())  # zeros then ones: LEFT padding
        ids, cmask = out.completion_ids[j], out.completion_mask[j]
        length = int(cmask.sum())
        assert cmask[:length].all() and not cmask[length:].any()
        assert (ids[length:] == tokenizer.pad_token_id).all()
        kept = ids[:length].tolist()
        if out.finish_reasons[j] == "stop":
            assert kept[-1] == eos and eos not in kept[:-1]
        else:
            assert out.finish_reasons[j] == "length" and length == max_new and eos not in kept
        assert out.texts[j] == tokenizer.decode(kept, skip_special_tokens=True)
    assert set(out.finish_reasons) == {"stop", "length"}
    assert out.completion_lengths.tolist() == out.completion_mask.sum(1).tolist()


def test_same_seed_same_samples_and_caller_rng_untouched(model, tokenizer):
    engine = HFEngine(model, tokenizer, batch_size=4)
    kw = dict(n=3, max_new_tokens=16, temperature=1.0, top_p=0.95)
    torch.manual_seed(123)
    a = engine.generate(PROMPTS, seed=7, **kw)
    after_a = torch.rand(3)
    torch.manual_seed(123)
    b = engine.generate(PROMPTS, seed=7, **kw)
    after_b = torch.rand(3)
    c = engine.generate(PROMPTS, seed=8, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)
    torch.manual_seed(123)
    assert torch.equal(after_a, after_b) and torch.equal(after_a, torch.rand(3))  # RNG forked, restored


def test_suppress_eos_gives_exactly_max_new_tokens(uniform_model, tokenizer):
    out = HFEngine(uniform_model, tokenizer, batch_size=16).generate(
        PROMPTS, n=8, max_new_tokens=40, temperature=1.0, seed=3, suppress_eos=True)
    assert out.completion_ids.shape == (24, 40) and out.completion_mask.all()
    assert out.finish_reasons == ["length"] * 24
    assert not (out.completion_ids == tokenizer.eos_token_id).any()


def test_greedy_left_padding_matches_unpadded_and_restores_mode(model, tokenizer):
    engine = HFEngine(model, tokenizer, batch_size=8)
    model.train()
    alone = engine.generate([PROMPTS[0]], n=1, max_new_tokens=12, temperature=0)
    batched = engine.generate([PROMPTS[1], PROMPTS[0]], n=2, max_new_tokens=12, temperature=0)
    assert model.training  # mode restored
    assert batched.prompt_mask[2].tolist().count(0) > 0  # the short prompt really was padded
    assert batched.texts[2] == batched.texts[3] == alone.texts[0]  # greedy: padding changes nothing
    assert batched.completion_ids[2, : alone.completion_ids.shape[1]].tolist() == alone.completion_ids[0].tolist()


def test_make_engine(model, tokenizer):
    assert isinstance(make_engine("hf", model, tokenizer, batch_size=2), HFEngine)
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("tgi", model, tokenizer)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"engine 'vllm' needs vLLM .*make test-vllm"):
            make_engine("vllm", model, tokenizer)
    else:
        with pytest.raises(ValueError, match="pass model_path"):
            make_engine("vllm", model, tokenizer)


def test_bad_arguments_fail_clearly(model, tokenizer):
    engine = HFEngine(model, tokenizer)
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(PROMPTS, n=1, max_new_tokens=4, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="n and max_new_tokens"):
        engine.generate(PROMPTS, n=0, max_new_tokens=4, temperature=1.0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate(["Hi", ""], n=1, max_new_tokens=4, temperature=1.0)
