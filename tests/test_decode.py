"""The ``torch`` engine (a lean KV-cache loop) against ``model.generate`` on tiny CPU models:
identical greedy outputs, the sampling distribution, top-p, EOS handling, seeding."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from r1flow.decode import DecodeEngine, nucleus_filter
from r1flow.engine import HFEngine, make_engine
from r1flow.grpo.logprobs import token_logprobs
from r1flow.modeling import ModelArch, build_model, train_tokenizer

ARCH = ModelArch(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
PROMPTS = ["Compute 1 + 2.", "Compute 12 + 7 - 3 and show the steps.", "Hi", "Compute 3 - 1"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["Compute 12 + 7 - 3. <think> 12 plus 7 is 19. </think> <answer> 16 </answer>"] * 20, 300)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(ARCH, tokenizer, seed=1)


@pytest.mark.parametrize("batch_size", [3, 64])  # 3: several calls, and fewer rows than n
def test_greedy_equals_generate_token_for_token(model, tokenizer, batch_size):
    kw = dict(n=2, max_new_tokens=20, temperature=0.0)
    ours = DecodeEngine(model, tokenizer, batch_size=batch_size).generate(PROMPTS, **kw)
    ref = HFEngine(model, tokenizer, batch_size=8).generate(PROMPTS, **kw)
    length = ref.completion_ids.shape[1]
    assert torch.equal(ours.prompt_ids, ref.prompt_ids) and torch.equal(ours.prompt_mask, ref.prompt_mask)
    assert torch.equal(ours.completion_ids[:, :length], ref.completion_ids)
    assert torch.equal(ours.completion_mask[:, :length], ref.completion_mask)
    assert (ours.texts, ours.finish_reasons, ours.prompt_index) == (ref.texts, ref.finish_reasons, ref.prompt_index)


@pytest.mark.parametrize("top_p", [1.0, 0.95])
def test_sampling_equals_generate_under_the_same_seed(model, tokenizer, top_p):
    """Same RNG use as ``generate`` (one multinomial over all rows per token): with one call per
    batch, the same seed gives the same samples — so switching engines keeps runs comparable."""
    with torch.no_grad():
        peaked = build_model(ARCH, tokenizer, seed=1)
        peaked.model.norm.weight.fill_(12.0)
    kw = dict(n=3, max_new_tokens=20, temperature=0.7, top_p=top_p, seed=4)
    ours = DecodeEngine(peaked, tokenizer, batch_size=64).generate(PROMPTS, **kw)
    ref = HFEngine(peaked, tokenizer, batch_size=64).generate(PROMPTS, **kw)
    assert torch.equal(ours.completion_ids[:, : ref.completion_ids.shape[1]], ref.completion_ids)
    assert ours.texts == ref.texts and len(set(ours.texts)) > len(PROMPTS)


def test_eos_stops_a_row_and_suppression_fills_the_budget(model, tokenizer):
    eos = tokenizer.eos_token_id
    uniform = build_model(ARCH, tokenizer, seed=1)
    with torch.no_grad():
        uniform.model.norm.weight.zero_()  # every logit 0: EOS has probability 1/|V| at each token
    engine = DecodeEngine(uniform, tokenizer)
    free = engine.generate(PROMPTS, n=50, max_new_tokens=40, temperature=1.0, seed=0)
    assert set(free.finish_reasons) == {"stop", "length"}
    for row, mask, reason in zip(free.completion_ids, free.completion_mask, free.finish_reasons):
        ends = (row == eos).nonzero()
        if reason == "stop":  # the mask runs through the first EOS, padding after it
            first = int(ends[0])
            assert mask[: first + 1].all() and not mask[first + 1:].any()
        else:
            assert mask.all() and len(ends) == 0
    fixed = engine.generate(PROMPTS, n=3, max_new_tokens=12, temperature=1.0, seed=0, suppress_eos=True)
    assert fixed.completion_ids.shape[1] == 12 and fixed.completion_mask.all()
    assert set(fixed.finish_reasons) == {"length"} and not (fixed.completion_ids == eos).any()


def test_seeded_calls_repeat_and_leave_the_global_rng_alone(model, tokenizer):
    engine = DecodeEngine(model, tokenizer)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = engine.generate(PROMPTS, n=4, max_new_tokens=16, temperature=1.0, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = engine.generate(PROMPTS, n=4, max_new_tokens=16, temperature=1.0, seed=7)
    c = engine.generate(PROMPTS, n=4, max_new_tokens=16, temperature=1.0, seed=8)
    assert torch.equal(a.completion_ids, b.completion_ids) and not torch.equal(a.completion_ids, c.completion_ids)


def test_first_token_frequencies_follow_the_tempered_softmax(model, tokenizer):
    """20,000 samples of the first completion token vs softmax(logits / T): total variation < 0.05
    (0.023–0.027 measured; the sampling noise alone is about that)."""
    prompt, temperature, n = "Compute 3 - 1", 0.7, 20_000
    model = build_model(ARCH, tokenizer, seed=1)
    with torch.no_grad():
        model.model.norm.weight.fill_(12.0)  # a peaked distribution, so the samples resolve it
    out = DecodeEngine(model, tokenizer, batch_size=n).generate([prompt], n=n, max_new_tokens=1,
                                                                temperature=temperature, seed=0)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = (model(input_ids=ids).logits[0, -1].float() / temperature).softmax(-1)
    seen = torch.bincount(out.completion_ids[:, 0], minlength=expected.numel()).float() / n
    assert expected.max() < 0.9 and (expected > 0.01).sum() >= 5  # peaked, not degenerate
    assert 0.5 * (seen - expected).abs().sum() < 0.05


def test_sampled_tokens_score_the_same_under_the_trainers_logprobs(model, tokenizer):
    """Rows sampled with left padding: the loop's own log-probs equal ``token_logprobs`` (the trainer's)."""
    engine = DecodeEngine(model, tokenizer)
    out = engine.generate(PROMPTS, n=2, max_new_tokens=10, temperature=1.0, seed=1, suppress_eos=True)
    ids = torch.cat([out.prompt_ids, out.completion_ids], dim=1)
    mask = torch.cat([out.prompt_mask, out.completion_mask], dim=1)
    with torch.no_grad():
        batched = token_logprobs(model, ids, mask, out.prompt_ids.shape[1])
        for row in range(len(out)):  # each row alone, unpadded: the reference
            real = out.prompt_ids[row][out.prompt_mask[row].bool()]
            alone = torch.cat([real, out.completion_ids[row]])[None]
            single = token_logprobs(model, alone, torch.ones_like(alone), real.numel())
            assert torch.allclose(batched[row], single[0], atol=1e-5)


def test_nucleus_filter_matches_transformers_top_p():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    for top_p in (0.1, 0.5, 0.95):
        theirs = TopPLogitsWarper(top_p)(None, logits.clone())
        assert torch.equal(nucleus_filter(logits, top_p).isinf(), theirs.isinf())
    assert nucleus_filter(logits, 1.0) is logits


def test_nucleus_filter_over_a_real_vocabulary_matches_transformers():
    """Qwen2.5's 151,936 logits: peaked rows (a trained model) go through the top-k candidates and
    keep exactly transformers' tokens; flat rows (a random model) take the full sort, where float
    sums over 150k terms may move the boundary by a token or two."""
    noise = torch.randn(4, 151_936, generator=torch.Generator().manual_seed(1))
    for top_p in (0.5, 0.95):
        peaked = noise * 12
        ours = nucleus_filter(peaked, top_p)
        assert torch.equal(ours.isinf(), TopPLogitsWarper(top_p)(None, peaked.clone()).isinf())
        assert torch.equal(ours[~ours.isinf()], peaked[~ours.isinf()])
        flat = noise * 0.1
        kept = (~nucleus_filter(flat, top_p).isinf()).sum(-1)
        theirs = (~TopPLogitsWarper(top_p)(None, flat.clone()).isinf()).sum(-1)
        assert (kept - theirs).abs().max() <= 2 and kept.min() > 1024  # wider than the candidates


def test_make_engine_names_the_torch_engine(model, tokenizer):
    assert isinstance(make_engine("torch", model, tokenizer), DecodeEngine)
    with pytest.raises(ValueError, match="'torch', 'hf'"):
        make_engine("mystery", model, tokenizer)
