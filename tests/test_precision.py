"""bf16 mixed precision that learns: autocast per forward (``r1flow.precision``), never one
context around a loop, whose cached bf16 weight copies made every later forward use step 0's."""

from __future__ import annotations

import json

import pytest
import torch

from r1flow.events import parse
from r1flow.grpo.logprobs import token_logprobs
from r1flow.modeling import ModelArch, build_model, save_model, train_tokenizer
from r1flow.precision import autocast_forwards, compute_dtype, freeze

ARCH = ModelArch(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["a b c d e f g 1 2 3 + = q <think> </think> <answer> </answer>"] * 20, 300)


def _batch(tok):
    ids = torch.tensor([tok.encode("q 1 + 2 = 3 a b c d")] * 2)
    return ids, torch.ones_like(ids)


def _sgd_step(model, ids, mask):
    logp = token_logprobs(model, ids, mask, 4)
    (-logp.mean()).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
            p.grad = None


def test_one_autocast_context_around_a_loop_trains_on_stale_weights():
    """The trap this module exists for, shown with torch itself: inside one autocast context a
    Linear layer's output after an optimizer step is exactly its output before the step."""
    torch.manual_seed(0)
    linear, x = torch.nn.Linear(8, 8), torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = linear(x)
        before.sum().backward()
        with torch.no_grad():
            for p in linear.parameters():
                p -= p.grad
        assert torch.equal(linear(x), before)  # stale: the cached bf16 weight of step 0
    assert not torch.equal(linear(x), before)
    stepped = autocast_forwards(linear, torch.bfloat16)
    assert not torch.equal(stepped(x), before)


def test_per_forward_autocast_sees_each_step_and_matches_fp32_of_the_new_weights(tok):
    model = autocast_forwards(build_model(ARCH, tok, seed=0), torch.bfloat16)
    ids, mask = _batch(tok)
    before = token_logprobs(model, ids, mask, 4).detach()
    _sgd_step(model, ids, mask)
    after = token_logprobs(model, ids, mask, 4).detach()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert (after - before).abs().max() > 0.05  # the step is seen
    fresh = build_model(ARCH, tok, seed=1)  # plain fp32, the stepped weights
    fresh.load_state_dict(model.state_dict())
    exact = token_logprobs(fresh, ids, mask, 4).detach()
    # bf16 keeps 8 mantissa bits: log-probs of a 300-token vocabulary agree to a few hundredths
    assert (after - exact).abs().max() < 0.1
    assert (after - exact).abs().max() < (after - before).abs().max() / 4


def test_autocast_forwards_is_idempotent_and_lets_fp32_alone(tok):
    model = build_model(ARCH, tok, seed=0)
    assert autocast_forwards(model, None) is model and not model._forward_pre_hooks
    autocast_forwards(model, torch.bfloat16)
    autocast_forwards(model, torch.bfloat16)
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1
    seen = []
    model.lm_head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    model(input_ids=torch.tensor([[1, 2, 3]]))
    assert seen == [torch.bfloat16] and not torch.is_autocast_enabled("cpu")  # left on return


def test_frozen_copies_are_bf16_without_gradients(tok):
    ref = freeze(build_model(ARCH, tok, seed=0), compute_dtype({"dtype": "bfloat16"}))
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in ref.parameters())
    rotary = [b for name, b in ref.named_buffers() if "inv_freq" in name]
    assert rotary and all(b.dtype == torch.float32 for b in rotary)  # positions keep their fp32 angles
    assert not ref.training
    with pytest.raises(ValueError, match="dtype"):
        compute_dtype({"dtype": "float16"})


def test_bf16_r1_zero_stage_sees_its_updates(tok, tmp_path, capsys):
    """A micro R1-Zero stage run in bf16 with β > 0 and two minibatches per rollout batch: after
    the first optimizer step the second minibatch's ratio moves off 1 and the KL to the
    reference is above 0 (under one autocast context around the stage both stayed exactly 1 and 0)."""
    from r1flow.config import load_config
    from r1flow.stages.runner import StageSpec, run_spec
    from r1flow.store import open_store

    model = build_model(ARCH, tok, seed=0)
    save_model(model, tok, tmp_path / "base" / "teacher")
    store = open_store(str(tmp_path / "store"))
    base = store.put_dir(tmp_path / "base", "artifacts/base/test", meta={"stage": "base"})
    cfg = load_config("micro", sets=["r1_zero.grpo.beta=0.05", "r1_zero.grpo.num_minibatches=2",
                                     "r1_zero.grpo.steps=2", "r1_zero.grpo.lr=0.01", "r1_zero.grpo.max_new_tokens=8"])
    runtime = {**cfg.shared(), "dtype": "bfloat16",
               "evaluate": {**cfg.evaluate.model_dump(), "max_problems": 2, "k": 1, "max_new_tokens": 4}}
    spec = StageSpec(stage="r1_zero", config=cfg.r1_zero.model_dump(mode="json"), runtime=runtime,
                     inputs={"policy": base}, output_key="artifacts/r1_zero/test", store_root=str(tmp_path / "store"),
                     work_root=str(tmp_path / "work"))
    ref = run_spec(spec)
    steps = [e for e in map(parse, capsys.readouterr().out.splitlines())
             if e and e["event"] == "metrics" and "ratio" in e["values"]]
    assert [e["step"] for e in steps] == [1, 2]
    for event in steps:
        assert event["values"]["ratio"] != 1.0 and event["values"]["kl_k3"] > 0
    assert steps[1]["values"]["kl_k3"] > 1e-4  # the policy moved away from the reference
    assert json.loads((store.local_path(ref.uri) / "train.json").read_text())["optimizer_steps"] == 4


def test_bf16_base_pretraining_learns_like_fp32(tmp_path, capsys):
    """The micro base stage in bf16: its pretraining loss falls as in fp32 (one autocast context
    around the stage left it at 5.64 → 5.47 where fp32 reaches 1.69)."""
    from r1flow.config import load_config
    from r1flow.stages.runner import StageSpec, run_spec

    cfg = load_config("micro", sets=["base.teacher_train.max_steps=40", "base.student_train.max_steps=1"])
    losses = {}
    for dtype in ("float32", "bfloat16"):
        runtime = {**cfg.shared(), "dtype": dtype,
                   "evaluate": {**cfg.evaluate.model_dump(), "max_problems": 1, "k": 1, "max_new_tokens": 2}}
        run_spec(StageSpec(stage="base", config=cfg.base.model_dump(mode="json"), runtime=runtime,
                           output_key=f"artifacts/base/{dtype}", store_root=str(tmp_path / "store"),
                           work_root=str(tmp_path / "work")))
        events = [e for e in map(parse, capsys.readouterr().out.splitlines()) if e and e["event"] == "metrics"]
        losses[dtype] = [e["values"]["teacher/loss"] for e in events if "teacher/loss" in e["values"]]
    fp32, bf16 = losses["float32"], losses["bfloat16"]
    assert fp32[-1] < 0.6 * fp32[0]
    assert bf16[-1] < 0.6 * bf16[0] and abs(bf16[-1] - fp32[-1]) < 0.1 * fp32[0]
