"""The paper's findings at tiny scale, as one flow anyone can rerun (issue 7; in progress).

Every arm runs once per seed of ``configs/experiments/findings.yaml`` (seeds and thresholds are
fixed there before the runs), all in the MLflow experiment ``r1flow-findings``; the flow writes
``report.md`` and curve PNGs and logs them to a run of that experiment. Claims so far:

1. R1-Zero (paper Table 2, Figures 2–3): GRPO from the base alone raises held-out pass@1; held-out
   accuracy and mean response length against steps.
2. Majority voting: cons@k ≥ pass@1 (the R1-Zero models, every seed).

Claims 3–5 (cold start, language consistency, distillation vs RL) are listed in the report as
not run yet. ``--quick`` runs the ``micro`` preset: it checks the flow end to end at CI size,
and its verdicts say nothing about the paper.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.compare import histories
from flows.pipeline import r1_zero
from r1flow import mlflow_runs
from r1flow.config import load_config
from r1flow.experiments.claims import Verdict, beats, mean_std
from r1flow.experiments.config import DEFAULT, FindingsConfig, load_findings
from r1flow.plots import plot_overlay
from r1flow.runtime import Runtime

EXPERIMENT = "r1flow-findings"
NOT_RUN = ("3. cold start (§2.3.1): fewer RL steps to a target accuracy, better format",
           "4. language consistency (§2.3.2): less mixed-language CoT at a small accuracy cost",
           "5. distillation beats RL for the small model at comparable compute (Table 6)")
CURVES = (("held-out pass@1", "eval/arith_heldout/pass_at_1"), ("accuracy reward (training)", "reward/accuracy/mean"),
          ("response length (tokens)", "response_length/mean"))


def seed_config(preset: str, seed: int, eval_every: int) -> dict[str, Any]:
    sets = [f"seed={seed}", f"tracking.experiment={EXPERIMENT}", f"r1_zero.eval_every={eval_every}"]
    return load_config(preset, sets=sets).model_dump(mode="json")


def r1_zero_arm(tracking_uri: str, parent_run_id: str, k: int) -> dict[str, Any]:
    """What claims 1–2 read from one seed's R1-Zero run: pass@1 at step 0 (the base) and at the
    end, cons@k at the end, and the curves."""
    client = mlflow_runs.client(tracking_uri)
    run_id = client.get_run(parent_run_id).data.tags["r1flow.stage.r1_zero.run"]
    history = histories(tracking_uri, run_id, tuple(key for _, key in CURVES))
    accuracy = [metrics[CURVES[0][1]] for _, metrics in history if CURVES[0][1] in metrics]
    final = client.get_run(run_id).data.metrics
    return {"start": accuracy[0], "end": accuracy[-1], "cons": final[f"eval/arith_heldout/cons_at_{k}"],
            "history": history}


def render_report(spec: FindingsConfig, preset: str, arms: dict[int, dict[str, Any]], verdicts: list[Verdict],
                  k: int, quick: bool) -> str:
    def cell(key: str) -> str:
        mean, std = mean_std([arm[key] for arm in arms.values()])
        return f"{mean:.3f} ± {std:.3f}"

    lines = [f"# DeepSeek-R1 findings at tiny scale ({preset} preset, seeds {spec.seeds})", ""]
    if quick:
        lines += ["**--quick run: the micro preset checks the flow, its verdicts say nothing about the paper.**", ""]
    lines += ["| held-out (mean ± std over seeds) | value |", "|---|---|",
              f"| base pass@1 (R1-Zero step 0) | {cell('start')} |", f"| R1-Zero pass@1 (end) | {cell('end')} |",
              f"| R1-Zero cons@{k} (end) | {cell('cons')} |", "", "## Verdicts", ""]
    lines += [f"- {v.line()}" for v in verdicts]
    lines += ["", "## Not run yet", "", *[f"- {claim}" for claim in NOT_RUN], "",
              "Regenerate: `r1flow findings" + (" --quick" if quick else "") + "`; thresholds and seeds: "
              "`configs/experiments/findings.yaml`.", "", "![R1-Zero curves](r1_zero_curves.png)"]
    return "\n".join(lines) + "\n"


@flow(name="r1-findings")
def findings(quick: bool = False, name: str = "findings", spec_path: str = str(DEFAULT)) -> dict:
    spec = load_findings(spec_path)
    preset = spec.quick_preset if quick else spec.preset
    runtime = Runtime(experiment=EXPERIMENT)
    arms: dict[int, dict[str, Any]] = {}
    for seed in spec.seeds:
        config = seed_config(preset, seed, eval_every=1 if quick else 40)
        summary = r1_zero(config=config, name=f"{name}-r1-zero-s{seed}")
        arms[seed] = r1_zero_arm(summary["tracking_uri"], summary["mlflow_parent_run"], config["evaluate"]["k"])
    k = config["evaluate"]["k"]
    seeds = list(arms)
    verdicts = [beats("1. R1-Zero raises held-out pass@1 over the base", [arms[s]["end"] for s in seeds],
                      [arms[s]["start"] for s in seeds], spec.thresholds.r1_zero_gain),
                beats(f"2. cons@{k} ≥ pass@1", [arms[s]["cons"] for s in seeds], [arms[s]["end"] for s in seeds],
                      spec.thresholds.cons_over_pass)]
    out = runtime.home / "findings" / name
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    report.write_text(render_report(spec, preset, arms, verdicts, k, quick))
    files = [report]
    png = plot_overlay({f"seed {s}": arms[s]["history"] for s in seeds}, out / "r1_zero_curves.png",
                       f"R1-Zero ({preset}): held-out accuracy, training accuracy, length vs step", panels=CURVES)
    files += [png] if png else []
    run_id = mlflow_runs.start_run(runtime.tracking_uri, runtime.experiment_id(), f"{name} report",
                                   tags={"r1flow.findings": name, "r1flow.quick": str(quick)})
    client = mlflow_runs.client(runtime.tracking_uri)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="report")
    mlflow_runs.log_params(runtime.tracking_uri, run_id, mlflow_runs.flatten(spec.model_dump(mode="json")))
    mlflow_runs.end_run(runtime.tracking_uri, run_id)
    return {"report": str(report), "mlflow_run": run_id, "verdicts": [v.line() for v in verdicts]}

