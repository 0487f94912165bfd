"""The paper's findings at tiny scale, as one flow anyone can rerun (issue 7).

Per seed of ``configs/experiments/findings.yaml`` (seeds, thresholds and the compute rule are fixed
there before the runs) five arms share one base, pretrained on a corpus whose worked chains partly
code-switch between English and Chinese (``r1flow.experiments.report`` describes the arms):

1. ``zero``: the ``r1-zero`` flow — claims 1 (R1-Zero, Table 2, Figures 2–3) and 2 (cons@k ≥ pass@1);
2. ``language``: the same with the language-consistency reward — claim 4 (§2.3.2);
3. ``cold``: base → R1-Zero → cold start → GRPO with ``zero``'s settings → rejection sampling →
   distillation of the student (the ``r1-findings-arm`` flow) — claims 3 (§2.3.1) and 5;
4. ``student_rl``: GRPO of the student from its base until it has spent the distillation's training
   FLOPs (``grpo.max_train_flops``) — claim 5 (Table 6).

Stages shared between arms are cache hits (same config section, same inputs). Everything lands in
the MLflow experiment ``r1flow-findings``; ``report.md`` and the curve PNGs are logged to a run of it.
``--quick`` runs the ``micro`` preset: it checks the flow end to end at CI size, and its verdicts
say nothing about the paper. ``--report-only`` re-renders the report from the runs already in
MLflow (after a change to the report, say) without training anything.
"""

from __future__ import annotations

import copy
from typing import Any

from prefect import flow

from flows.compare import histories
from flows.pipeline import r1_zero
from flows.run import PipelineRun
from r1flow import mlflow_runs
from r1flow.config import load_config, resolve
from r1flow.experiments.config import DEFAULT, FindingsConfig, load_findings
from r1flow.experiments.report import BENCH, METRICS, Arm, eval_key, render, verdicts
from r1flow.plots import plot_overlay
from r1flow.runtime import Runtime

EXPERIMENT = "r1flow-findings"
COLD_ARM = ("base", "r1_zero", "cold_start", "reasoning_rl", "rejection_sampling", "distill")
CURVES = {  # file: (title, panels, arms drawn)
    "r1_zero_curves.png": ("R1-Zero: held-out accuracy, training accuracy and length vs step",
                           (("held-out pass@1", eval_key("pass_at_1")), ("accuracy reward (training)",
                            "reward/accuracy/mean"), ("response length (tokens)", "response_length/mean")), ("zero",)),
    "cold_start_curves.png": ("RL from the base vs RL after cold start", (
        ("held-out pass@1", eval_key("pass_at_1")), ("held-out format rate", eval_key("format_rate")),
        ("held-out mixed-language rate", eval_key("mixed_language_rate"))), ("zero", "cold")),
    "language_curves.png": ("GRPO without and with the language reward", (
        ("held-out pass@1", eval_key("pass_at_1")), ("held-out mixed-language rate", eval_key("mixed_language_rate")),
        ("language reward (training)", "reward/language/mean")), ("zero", "language")),
}
KEYS = tuple(sorted({key for _, panels, _ in CURVES.values() for _, key in panels} | {eval_key(m) for m in METRICS}))


@flow(name="r1-findings-arm")
def cold_start_arm(config: dict[str, Any], name: str) -> dict:
    """Base → R1-Zero → cold start (§2.3.1) → GRPO → rejection sampling → distilled student."""
    with PipelineRun(resolve(config), name, flow="r1-findings-arm", stages=COLD_ARM, allow_config_change=True) as run:
        base = run.stage("base")
        zero = run.stage("r1_zero", policy=base)
        cold = run.stage("cold_start", base=base, zero=zero)
        reasoner = run.stage("reasoning_rl", policy=cold)
        data = run.stage("rejection_sampling", policy=reasoner)
        run.stage("distill", base=base, data=data)
    return run.summary()


def arm_configs(preset: str, seed: int, spec: FindingsConfig, eval_every: int) -> dict[str, dict[str, Any]]:
    """The arms' pipeline configs for one seed: identical but for what each arm tests."""
    sets = [f"seed={seed}", f"tracking.experiment={EXPERIMENT}", f"r1_zero.eval_every={eval_every}",
            f"base.corpus.mix.mixed_language={spec.mixed_language}"]
    zero = load_config(preset, sets=sets).model_dump(mode="json")
    language = copy.deepcopy(zero)
    weight = next((r["weight"] for p in zero["reasoning_rl"]["prompts"] for r in p["rewards"]
                   if r["name"] == "language"), 0.1)  # the recipe's own weight for it
    for source in language["r1_zero"]["prompts"]:
        source["rewards"].append({"name": "language", "weight": weight, "params": {}})
    cold = copy.deepcopy(zero)
    cold["reasoning_rl"].update(grpo=copy.deepcopy(zero["r1_zero"]["grpo"]), eval_every=eval_every,
                                prompts=copy.deepcopy(zero["r1_zero"]["prompts"]))
    return {"zero": zero, "language": language, "cold": cold}


def stage_arm(tracking_uri: str, parent_run_id: str, stage: str) -> Arm:
    """An arm read back from MLflow: the stage run its parent run points to."""
    client = mlflow_runs.client(tracking_uri)
    run_id = client.get_run(parent_run_id).data.tags[f"r1flow.stage.{stage}.run"]
    final = dict(client.get_run(run_id).data.metrics)
    keys = set(KEYS) | {key for key in final if key.startswith(f"eval/{BENCH}/")}
    return Arm(histories(tracking_uri, run_id, tuple(sorted(keys))), final)


ARM_RUNS = {"zero": ("r1-zero", "r1_zero"), "language": ("language", "r1_zero"),  # arm: (run name, stage)
            "cold": ("cold-start", "reasoning_rl"), "distill": ("cold-start", "distill"),
            "student_rl": ("student-rl", "r1_zero")}


def run_name(name: str, arm: str, seed: int) -> str:
    return f"{name}-{ARM_RUNS[arm][0]}-s{seed}"


def run_seed(preset: str, seed: int, spec: FindingsConfig, name: str, eval_every: int) -> dict[str, Arm]:
    configs = arm_configs(preset, seed, spec, eval_every)
    runs = {arm: r1_zero(config=configs[arm], name=run_name(name, arm, seed), allow_config_change=True)
            for arm in ("zero", "language")}
    runs["cold"] = runs["distill"] = cold_start_arm(config=configs["cold"], name=run_name(name, "cold", seed))
    arms = {arm: stage_arm(r["tracking_uri"], r["mlflow_parent_run"], ARM_RUNS[arm][1]) for arm, r in runs.items()}
    student = copy.deepcopy(configs["zero"])  # R1-Zero's GRPO on the student, stopped at distillation's FLOPs;
    student["r1_zero"].update(model="student", eval_every=0)  # no KL-logging reference forward eating its budget
    student["r1_zero"]["grpo"].update(max_train_flops=arms["distill"].flops, log_kl=False,
                                      steps=100 * student["r1_zero"]["grpo"]["steps"])
    rl = r1_zero(config=student, name=run_name(name, "student_rl", seed), allow_config_change=True)
    arms["student_rl"] = stage_arm(rl["tracking_uri"], rl["mlflow_parent_run"], "r1_zero")
    return arms


def read_seed(tracking_uri: str, seed: int, name: str) -> dict[str, Arm]:
    """A seed's arms as the runs already in MLflow left them (``--report-only``: re-render, no training)."""
    arms = {}
    for arm, (_, stage) in ARM_RUNS.items():
        runs = mlflow_runs.find_pipeline_runs(tracking_uri, run_name(name, arm, seed), experiment=EXPERIMENT)
        if not runs:
            raise ValueError(f"no run {run_name(name, arm, seed)!r} in MLflow experiment {EXPERIMENT}: "
                             f"run `r1flow findings --name {name}` first")
        arms[arm] = stage_arm(tracking_uri, runs[0].info.run_id, stage)
    return arms


@flow(name="r1-findings")
def findings(quick: bool = False, name: str = "findings", spec_path: str = str(DEFAULT),
             report_only: bool = False) -> dict:
    spec = load_findings(spec_path)
    preset = spec.quick_preset if quick else spec.preset
    eval_every = 1 if quick else 40
    runtime = Runtime(experiment=EXPERIMENT)
    arms = {seed: read_seed(runtime.tracking_uri, seed, name) if report_only
            else run_seed(preset, seed, spec, name, eval_every) for seed in spec.seeds}
    config = load_config(preset)
    k, horizon = config.evaluate.k, config.r1_zero.grpo.steps
    found = verdicts(spec, arms, k, horizon)
    out = runtime.home / "findings" / name
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for file, (title, panels, drawn) in CURVES.items():
        lines = {f"{arm} s{seed}": by_arm[arm].history for seed, by_arm in arms.items() for arm in drawn}
        if plot_overlay(lines, out / file, f"{title} ({preset})", panels=panels):
            plots.append(file)
    report = out / "report.md"
    report.write_text(render(spec, preset, arms, found, k, horizon, quick, plots))
    run_id = mlflow_runs.start_run(runtime.tracking_uri, runtime.experiment_id(), f"{name} report",
                                   tags={"r1flow.findings": name, "r1flow.quick": str(quick)})
    client = mlflow_runs.client(runtime.tracking_uri)
    for path in [report, *(out / p for p in plots)]:
        client.log_artifact(run_id, str(path), artifact_path="report")
    mlflow_runs.log_params(runtime.tracking_uri, run_id, mlflow_runs.flatten(spec.model_dump(mode="json")))
    for v in found:  # verdict/1, 2, 3a, 3b, 4a, 4b, 5: 1.0 reproduced, 0.0 not
        client.log_metric(run_id, f"verdict/{v.claim.split('.')[0]}", float(v.holds))
    mlflow_runs.end_run(runtime.tracking_uri, run_id)
    return {"report": str(report), "mlflow_run": run_id, "verdicts": [v.line() for v in found]}
