"""``sdpa_gqa``: the same attention as transformers' sdpa on masked (left-padded) batches, in
values and gradients, without the KV-head copy; models without grouped heads are left alone."""

from __future__ import annotations

import torch

from r1flow.attention import NAME, use_native_gqa
from r1flow.engine import left_pad
from r1flow.modeling import ModelArch, build_model, train_tokenizer

GQA = ModelArch(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


def _padded_batch():
    tok = train_tokenizer(["Compute 12 + 7 - 3. <think> 12 plus 7 is 19. </think>"] * 10, 300)
    ids, mask = left_pad([tok(t, add_special_tokens=False)["input_ids"] for t in ("Compute 1 + 2", "12 plus 7 is 19")],
                         tok.pad_token_id)
    return tok, ids, mask


def _assert_same_values_and_gradients(models, ids, mask) -> None:
    outs = []
    for model in models:
        logits = model(input_ids=ids, attention_mask=mask).logits
        (logits * mask[..., None]).sum().backward()
        outs.append((logits, [p.grad for p in model.parameters()]))
    (a, grads_a), (b, grads_b) = outs
    assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(grads_a, grads_b))


def test_native_gqa_matches_sdpa_with_a_padding_mask():
    tok, ids, mask = _padded_batch()
    plain, native = build_model(GQA, tok, seed=0), build_model(GQA, tok, seed=0)
    assert use_native_gqa(native) and native.config._attn_implementation == NAME
    assert plain.config._attn_implementation == "sdpa"
    _assert_same_values_and_gradients((plain, native), ids, mask)


def test_models_without_grouped_heads_are_left_alone():
    tok = train_tokenizer(["Compute 1 + 2"] * 10, 280)
    mha = build_model(ModelArch(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64), tok)
    assert not use_native_gqa(mha) and mha.config._attn_implementation == "sdpa"


def test_the_expanded_kv_path_cuda_takes_with_a_mask_gives_the_same_attention(monkeypatch):
    """On CUDA a masked call expands the KV heads (the memory-efficient kernel takes a mask, the
    grouped call would leave only the math kernel): the same values and gradients as the copy-free
    path. Forced here on the CPU."""
    import r1flow.attention as attention

    assert not attention.expand_kv(torch.zeros(1), torch.ones(1))  # CPU tensors keep the copy-free path
    tok, ids, mask = _padded_batch()
    models = []
    for expand in (False, True):
        model = build_model(GQA, tok, seed=0)
        use_native_gqa(model)
        models.append(_Expanding(model, expand, monkeypatch))
    _assert_same_values_and_gradients(models, ids, mask)


class _Expanding(torch.nn.Module):
    """``model`` with the CUDA branch of ``expand_kv`` forced on or off for its forward passes."""

    def __init__(self, model, expand: bool, monkeypatch) -> None:
        super().__init__()
        self.model, self.expand, self.monkeypatch = model, expand, monkeypatch

    def forward(self, **kwargs):
        import r1flow.attention as attention

        self.monkeypatch.setattr(attention, "expand_kv", lambda q, m: self.expand and m is not None)
        return self.model(**kwargs)
