"""The whole ``micro`` DAG through ``r1flow run`` on real checkpoints given as hub ids: a teacher on
the real Qwen2.5-Math-1.5B config and tokenizer, a Llama-architecture student on SmolLM2's (no
pad token, eos from config.json), both random-weight and resolved offline from the hub cache.

Random weights earn no reward: the run must still complete, report its zeros, pin each hub id to
its commit in the MLflow params, and write models that reload with ``AutoModelForCausalLM`` and
the same tokenizer and chat template."""

from __future__ import annotations

import json

import pytest

from tests.conftest import r1flow

pytestmark = pytest.mark.usefixtures("prefect_api")  # the session's Prefect server: no ephemeral start-up

TEACHER, STUDENT = "Qwen/Qwen2.5-Math-1.5B", "HuggingFaceTB/SmolLM2-135M-Instruct"
SMALL = [  # every stage does its real work, at the smallest size that still exercises it
    f"base.teacher.source={TEACHER}", f"base.student.source={STUDENT}",
    "evaluate={max_problems: 3, k: 1, max_new_tokens: 8, top_p: 1.0, batch_size: 8}",
    "r1_zero.grpo={steps: 2, prompts_per_step: 2, group_size: 2, max_new_tokens: 8, beta: 0.01}",
    "reasoning_rl.grpo={steps: 1, prompts_per_step: 2, group_size: 2, max_new_tokens: 8}",
    "final_rl.grpo={steps: 1, prompts_per_step: 2, group_size: 2, max_new_tokens: 8}",
    "cold_start.num_prompts=2", "cold_start.samples_per_prompt=1", "cold_start.max_new_tokens=8",
    "cold_start.train={max_steps: 2, batch_size: 4}",
    "rejection_sampling.num_prompts=4", "rejection_sampling.samples_per_prompt=1",
    "rejection_sampling.max_new_tokens=8", "rejection_sampling.top_p=1.0",
    "sft.train={max_steps: 2, batch_size: 4}", "distill.train={max_steps: 2, batch_size: 4}",
    "reward_model.train_pairs=16", "reward_model.eval_pairs=8", "reward_model.train={steps: 2, eval_every: 2}",
]


@pytest.fixture(scope="module")
def real_run(hub_cache, tmp_path_factory):
    home = tmp_path_factory.mktemp("real-home")
    args = ["run", "--preset", "micro", "--name", "real"] + [a for s in SMALL for a in ("--set", s)]
    out = r1flow(args, home, timeout=900, HF_HUB_CACHE=str(hub_cache))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return home, hub_cache


def _artifact(home, stage: str):
    found = list((home / "store" / "artifacts" / stage).glob("*/manifest.json"))
    assert len(found) == 1, found
    return found[0].parent


def test_the_pipeline_pins_its_hub_models_and_reports_zeros(real_run):
    from r1flow import mlflow_runs

    home, cache = real_run
    uri = f"sqlite:///{home / 'mlflow.db'}"
    parent = mlflow_runs.find_pipeline_runs(uri, "real")[0]
    for role, repo in (("teacher", TEACHER), ("student", STUDENT)):
        sha = (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").read_text()
        assert parent.data.params[f"base.{role}.resolved"] == sha
        assert json.loads((_artifact(home, "base") / role / "source.json").read_text())["resolved"] == sha
    for stage in ("final_rl", "distill"):
        metrics = json.loads((_artifact(home, stage) / "eval.json").read_text())
        assert metrics["eval/arith_heldout/pass_at_1"] == 0.0 and metrics["eval/arith_heldout/num_problems"] == 3


@pytest.mark.parametrize("stage, repo, arch", [("final_rl", TEACHER, "Qwen2ForCausalLM"),
                                               ("distill", STUDENT, "LlamaForCausalLM")])
def test_trained_models_reload_with_the_hub_tokenizer_and_template(real_run, stage, repo, arch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1flow.loading import load_tokenizer

    home, _ = real_run
    folder = _artifact(home, stage) / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    saved, hub = AutoTokenizer.from_pretrained(folder), load_tokenizer(repo)
    assert type(model).__name__ == arch and model.get_input_embeddings().num_embeddings >= len(hub)
    text = "User: What is 2+3?\nAssistant: <think> 2 + 3 = 5 </think> The answer is \\boxed{5}."
    assert saved(text)["input_ids"] == hub(text)["input_ids"]
    assert (saved.eos_token_id, saved.pad_token_id, saved.chat_template) == (hub.eos_token_id, hub.pad_token_id,
                                                                            hub.chat_template)
    ids = torch.tensor([hub(text)["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("model, template", [pytest.param(TEACHER, None, marks=pytest.mark.slow),
                                             ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "chat")])
def test_r1flow_evaluate_takes_a_hub_model(hub_cache, tmp_path, model, template):
    """``r1flow evaluate ORG/NAME``: the hub model pinned into a source artifact and evaluated on
    real MATH-500 problems, by default as plain chain of thought graded on its last \\boxed{}."""
    from tests.conftest import SHARED_DATA

    sets = [f"evaluate.benchmarks=[math500={SHARED_DATA / 'math500' / 'test.jsonl'}]",
            "evaluate={max_problems: 2, k: 1, max_new_tokens: 6, top_p: 1.0}", "tracking.promotion.benchmark=math500_test"]
    sets += [f"evaluation.template={template}"] if template else []
    out = r1flow(["evaluate", model, "--preset", "micro"] + [a for s in sets for a in ("--set", s)], tmp_path,
                 timeout=600, HF_HUB_CACHE=str(hub_cache))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (evaluated,) = (tmp_path / "store" / "artifacts" / "evaluation").glob("*/eval.json")
    result = json.loads(evaluated.read_text())
    assert result["template"] == (template or "boxed") and result["eval/math500_test/num_problems"] == 2
    (source,) = (tmp_path / "store" / "sources").glob("*/model/source.json")
    pinned = json.loads(source.read_text())
    assert pinned["source"] == model and len(pinned["resolved"]) == 40


def test_a_model_that_is_neither_artifact_nor_source_is_refused_by_name(tmp_path):
    out = r1flow(["evaluate", "nobody/nothing", "--preset", "micro"], tmp_path, timeout=600)
    assert out.returncode == 2 and "model 'nobody/nothing'" in out.stderr + out.stdout
