"""The reward model on real presets (paper §2.3.4): an existing reward model used as is (a folder,
a hub id), one trained from the pipeline's base on a preference file, and final-RL scoring with
the reward model's own tokenizer — on random-weight models built from REAL configs and tokenizers
(Qwen2.5, and SmolLM2's Llama whose tokenizer has no pad token), offline."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from r1flow.config import RewardModelConfig, RewardSpec
from r1flow.events import parse
from r1flow.stages.runner import StageContext, StageSpec, UserError, run_spec
from r1flow.store import open_store
from tests.conftest import SHARED_DATA, shrunk_model_folder

HUB = SHARED_DATA / "hub"
pytestmark = pytest.mark.skipif(not HUB.is_dir(), reason=f"no real hub configs and tokenizers in {HUB}")
RUNTIME = {"seed": 0, "threads": 1, "device": "cpu", "dtype": "float32"}
PROMPTS = ["Reply politely: Can you help me with my garden?", "Hi",
           "Reply politely: What should I do about the invoice? It is late and I am worried.", "Hi"]
RESPONSES = ["Hello! Thank you for asking about the garden.", "Go away.",
             "Greetings! I am glad you asked about the invoice, please pay it soon.", "Go away."]
TOPICS = ["garden", "invoice", "meeting", "printer", "holiday", "package", "library", "recipe", "bicycle",
          "concert", "laptop", "kitchen", "ticket", "museum", "letter", "project", "camera", "window",
          "doctor", "lesson"]


def _classifier_folder(hub_folder: str, dest: Path, *, drop_pad: bool = False) -> Path:
    """A random-weight one-label sequence classifier on a real config (``shrunk_model_folder``)."""
    return shrunk_model_folder(HUB / hub_folder, dest, classifier=True, drop_pad=drop_pad)


@pytest.fixture(scope="module")
def rm_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rms")
    return {"qwen": _classifier_folder("Qwen--Qwen2.5-0.5B", root / "qwen-rm"),
            # SmolLM2: no tokenizer_config.json, no pad token, and here no pad_token_id in config.json either
            "llama": _classifier_folder("HuggingFaceTB--SmolLM2-135M-Instruct", root / "llama-rm",
                                        drop_pad=True)}


@pytest.fixture(scope="module")
def base_ref(tmp_path_factory):
    """A base artifact whose teacher/ and student/ hold only source.json, pointing at a causal LM
    folder on the shrunk real Qwen2.5-Math-1.5B config (as the base stage writes for hub bases)."""
    root = tmp_path_factory.mktemp("base")
    lm = shrunk_model_folder(HUB / "Qwen--Qwen2.5-Math-1.5B", root / "math-lm")
    for role in ("teacher", "student"):
        (root / "artifact" / role).mkdir(parents=True)
        (root / "artifact" / role / "source.json").write_text(json.dumps(
            {"source": str(lm), "revision": None, "trust_remote_code": False, "resolved": None}))
    store = open_store(str(root / "store"))
    return store.put_dir(root / "artifact", "artifacts/base/test", meta={"stage": "base"}), lm, root / "store"


def _preferences(path: Path, n: int = 20, drop: str | None = None) -> Path:
    rows = []
    for i, topic in enumerate(TOPICS[:n]):
        rows.append({"id": f"pref-{i}", "prompt": f"Reply politely: I have a question about the {topic}.",
                     "chosen": f"Hello! Thank you for asking about the {topic}.",
                     "rejected": f"Stop asking me about the {topic}. Go away."})
        if drop:
            rows[-1].pop(drop)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(tmp_path: Path, config: dict, base=None, dtype: str = "float32"):
    """Run the stage in this process (``base``: the base_ref fixture, whose store it then uses)."""
    store_root = base[2] if base else tmp_path / "store"
    inputs = {"base": base[0]} if base else {}
    spec = StageSpec(stage="reward_model", config=RewardModelConfig(**config).model_dump(mode="json"),
                     runtime={**RUNTIME, "dtype": dtype}, inputs=inputs, output_key="artifacts/rm/t",
                     store_root=str(store_root), work_root=str(tmp_path / "work"))
    ref = run_spec(spec)
    return open_store(str(store_root)).local_path(ref.uri)


def _ctx(tmp_path: Path, artifact: Path, dtype: str = "float32") -> StageContext:
    """The context the final RL stage gives its reward function."""
    spec = StageSpec(stage="final_rl", config={}, runtime={**RUNTIME, "dtype": dtype}, output_key="x",
                     store_root=str(tmp_path / "store"))
    return StageContext(spec, None, {"reward_model": artifact}, tmp_path, open_store(str(tmp_path / "store")))


def _metrics(out: str) -> list[dict]:
    return [e for e in map(parse, out.splitlines()) if e and e["event"] == "metrics"]


@pytest.mark.parametrize("which", ["qwen", "llama"])
def test_source_rm_is_published_and_scores_batched_like_one_by_one(which, rm_folders, tmp_path):
    from r1flow.stages.reward_model import reward_scorer

    folder = rm_folders[which]
    artifact = _run(tmp_path, {"source": str(folder)})
    assert json.loads((artifact / "model" / "source.json").read_text()) == {
        "source": str(folder), "revision": None, "trust_remote_code": False, "resolved": None}
    assert not list((artifact / "model").glob("*.safetensors"))  # nothing trained, nothing copied

    ctx = _ctx(tmp_path, artifact)
    batched = reward_scorer(ctx, artifact, batch_size=3)(PROMPTS, RESPONSES)
    one = reward_scorer(ctx, artifact, batch_size=1)
    singles = [one([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert all(math.isfinite(s) for s in batched)
    assert batched == pytest.approx(singles, abs=1e-4)  # padding changes no score
    assert batched[1] == pytest.approx(batched[3], abs=1e-4) and abs(batched[0] - batched[1]) > 1e-3
    tok = one.tokenizer
    assert one.model.config.pad_token_id == one.pad_id == (2 if which == "llama" else 151643)
    if which == "qwen":  # its own chat template: what the reward model reads is the rendered conversation
        assert "<|im_start|>assistant" in tok.decode(tok(tok.apply_chat_template(
            [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}], tokenize=False),
            add_special_tokens=False)["input_ids"])
    else:
        assert tok.pad_token_id == 2 and not tok.chat_template  # no pad: the eos stands in


def test_final_rl_reward_scores_the_summary_with_the_source_rm(rm_folders, tmp_path):
    """The final-RL reward function: rows of its source scored on the text after </think>, others NaN."""
    from r1flow.stages.reward_model import reward_scorer
    from r1flow.stages.rl import _reward_fn

    artifact = _run(tmp_path, {"source": str(rm_folders["qwen"])})
    ctx = _ctx(tmp_path, artifact)
    rows = {"1:nonreasoning#0": {"question": PROMPTS[0], "source": "nonreasoning"}}  # its source's rows by key
    spec = RewardSpec(name="reward_model", params={"batch_size": 2})
    fn = _reward_fn(spec, "r1", ctx, rows)
    completions = [f"<think>\nlong reasoning\n</think>\n{RESPONSES[0]}", "<think>x</think> 2",
                   f"<think>\nother reasoning\n</think>\n{RESPONSES[0]}"]
    keys = ["1:nonreasoning#0", "0:arith#0", "1:nonreasoning#0"]  # routed by key: the prompt text is alike
    out = fn(["P"] * 3, completions, ["", "2", ""], keys=keys)
    expected = reward_scorer(ctx, artifact)([PROMPTS[0]], [RESPONSES[0]])[0]
    assert math.isnan(out.scores[1])
    assert [out.scores[0], out.scores[2]] == pytest.approx([expected] * 2, abs=1e-4)
    with pytest.raises(ValueError, match="trust_remote_code"):
        reward_scorer(ctx, artifact, trust_remote_code=True)


def test_hub_id_source_resolves_offline_from_the_hub_cache(rm_folders, tmp_path):
    from r1flow.stages.reward_model import reward_scorer

    repo = "r1flow-test/tiny-rm"
    root = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo.replace('/', '--')}"
    sha = hashlib.sha1(repo.encode()).hexdigest()
    if not root.is_dir():
        shutil.copytree(rm_folders["qwen"], root / "snapshots" / sha)
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(sha)
    artifact = _run(tmp_path, {"source": repo, "resolved": sha})
    assert json.loads((artifact / "model" / "source.json").read_text())["resolved"] == sha
    from_hub = reward_scorer(_ctx(tmp_path, artifact), artifact)(PROMPTS[:2], RESPONSES[:2])
    local = _run(tmp_path / "local", {"source": str(rm_folders["qwen"])})
    from_folder = reward_scorer(_ctx(tmp_path, local), local)(PROMPTS[:2], RESPONSES[:2])
    assert from_hub == pytest.approx(from_folder, abs=1e-5)


def test_source_rm_accuracy_on_a_preference_file_and_min_accuracy(rm_folders, tmp_path, capsys):
    prefs = _preferences(tmp_path / "prefs.jsonl")
    artifact = _run(tmp_path, {"source": str(rm_folders["qwen"]), "preferences": str(prefs), "eval_pairs": 6,
                               "min_accuracy": 0.0})
    metrics = json.loads((artifact / "metrics.json").read_text())
    logged = [e["values"]["accuracy"] for e in _metrics(capsys.readouterr().out) if "accuracy" in e["values"]]
    assert logged == [metrics["eval_accuracy"]] and 0.0 <= logged[0] <= 1.0
    if metrics["eval_accuracy"] < 1.0:
        with pytest.raises(RuntimeError, match="min_accuracy"):
            _run(tmp_path / "strict", {"source": str(rm_folders["qwen"]), "preferences": str(prefs),
                                       "eval_pairs": 6, "min_accuracy": 1.0})


def test_init_from_a_hub_base_trains_on_a_preference_file(base_ref, tmp_path, capsys):
    """The base's teacher/ holds only source.json: tokenizer and body weights come through it; the
    pair loss falls on a tiny preference set (memorized), and held-out accuracy is logged."""
    from safetensors.torch import load_file

    from r1flow.stages.reward_model import load_preferences, preference_split, reward_scorer

    lm = base_ref[1]
    prefs = _preferences(tmp_path / "prefs.jsonl")
    train = {"steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "eval_every": 10, "max_length": 64,
             "eval_batch_size": 8}
    artifact = _run(tmp_path, {"init": "base", "base_model": "teacher", "preferences": str(prefs),
                               "eval_pairs": 4, "min_accuracy": 0.0, "train": train}, base=base_ref)
    events = _metrics(capsys.readouterr().out)
    losses = [e["values"]["train_loss"] for e in events if "train_loss" in e["values"]]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0], losses
    assert [e["values"]["accuracy"] for e in events if "accuracy" in e["values"]]
    rows = load_preferences(str(prefs))
    held_out = {r["id"] for r in preference_split(rows, 4)[1]}
    assert len(held_out) == 4 and held_out == {r["id"] for r in preference_split(rows[::-1], 4)[1]}

    config = json.loads((artifact / "model" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and config["pad_token_id"] == 151643
    saved, base = load_file(artifact / "model" / "model.safetensors"), load_file(lm / "model.safetensors")
    assert saved["model.embed_tokens.weight"].shape == base["model.embed_tokens.weight"].shape
    assert (saved["model.norm.weight"] - base["model.norm.weight"]).abs().max() < 0.5  # trained from the base
    scores = reward_scorer(_ctx(tmp_path, artifact), artifact)(PROMPTS, RESPONSES)
    assert all(math.isfinite(s) for s in scores)


def test_bf16_scoring_is_frozen_bf16_and_close_to_fp32(rm_folders, tmp_path):
    from r1flow.stages.reward_model import reward_scorer

    artifact = _run(tmp_path, {"source": str(rm_folders["qwen"])})
    fp32 = reward_scorer(_ctx(tmp_path, artifact), artifact)(PROMPTS, RESPONSES)
    scorer = reward_scorer(_ctx(tmp_path, artifact, "bfloat16"), artifact, batch_size=4)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in scorer.model.parameters())
    bf16 = scorer(PROMPTS, RESPONSES)
    assert all(math.isfinite(s) for s in bf16)
    assert max(abs(a - b) for a, b in zip(bf16, fp32)) < 0.1, (bf16, fp32)


def test_bf16_training_from_the_base_keeps_fp32_weights(base_ref, tmp_path):
    from safetensors.torch import load_file

    prefs = _preferences(tmp_path / "prefs.jsonl", n=8)
    train = {"steps": 2, "batch_size": 4, "eval_every": 2, "max_length": 32}
    artifact = _run(tmp_path, {"init": "base", "preferences": str(prefs), "eval_pairs": 2,
                               "min_accuracy": 0.0, "train": train}, base=base_ref, dtype="bfloat16")
    saved = load_file(artifact / "model" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # fp32 master weights; bf16 only per forward
    assert math.isfinite(json.loads((artifact / "metrics.json").read_text())["train_loss"])


def test_bad_inputs_fail_naming_the_field(rm_folders, base_ref, tmp_path):
    empty = tmp_path / "no-config"
    empty.mkdir()
    with pytest.raises(UserError, match=r"reward_model\.source: .*config\.json"):
        _run(tmp_path, {"source": str(empty)})
    with pytest.raises(UserError, match=r"reward_model\.source: .*not a sequence classifier"):
        _run(tmp_path, {"source": str(base_ref[1])})  # a causal LM would get a random reward head
    with pytest.raises(UserError, match=r"reward_model\.source: .*changed since"):
        _run(tmp_path, {"source": str(rm_folders["qwen"]), "resolved": "local-0000"})
    bad = _preferences(tmp_path / "bad.jsonl", drop="rejected")
    with pytest.raises(UserError, match=r"reward_model\.preferences: .*bad\.jsonl:1: missing .*'rejected'"):
        _run(tmp_path, {"init": "base", "preferences": str(bad)}, base=base_ref)
    few = _preferences(tmp_path / "few.jsonl", n=3)
    with pytest.raises(UserError, match=r"reward_model\.eval_pairs"):
        _run(tmp_path, {"preferences": str(few), "eval_pairs": 3}, base=base_ref)
    with pytest.raises(UserError, match="needs input 'base'"):
        _run(tmp_path, {})
    with pytest.raises(ValidationError, match=r"reward_model\.init"):
        RewardModelConfig(source="org/rm", init="base")
    with pytest.raises(ValidationError, match=r"reward_model\.revision"):
        RewardModelConfig(revision="main")
