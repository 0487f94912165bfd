"""The paper-findings flow end to end at CI size (``r1flow findings --quick``): per seed the
R1-Zero, language-reward, cold-start (with distillation) and compute-matched student-RL arms in one
MLflow experiment, a report with the verdicts of all five claims and curves, logged to MLflow.
``make test-slow``."""

from __future__ import annotations

import re

import pytest

from tests.conftest import r1flow

PLOTS = ("r1_zero_curves.png", "cold_start_curves.png", "language_curves.png")


@pytest.mark.slow
def test_quick_findings_report(tmp_path):
    out = r1flow(["findings", "--quick", "--name", "ci"], tmp_path, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (tmp_path / "findings" / "ci" / "report.md").read_text()
    assert "seeds [0, 1, 2]" in report and "--quick run" in report
    verdicts = re.findall(r"^- (\d[ab]?)\. .*: (reproduced|NOT reproduced) — ", report, re.M)
    assert [claim for claim, _ in verdicts] == ["1", "2", "3a", "3b", "4a", "4b", "5"], report
    assert "Table 6" in report and "student distilled" in report
    for plot in PLOTS:
        assert (tmp_path / "findings" / "ci" / plot).stat().st_size > 10_000

    from r1flow import mlflow_runs

    client = mlflow_runs.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("r1flow-findings")
    runs = client.search_runs([experiment.experiment_id])
    names = sorted(r.info.run_name for r in runs if r.data.tags.get("r1flow.flow") in ("r1-zero", "r1-findings-arm"))
    assert names == sorted(f"ci-{arm}-s{s}" for arm in ("r1-zero", "language", "cold-start", "student-rl")
                           for s in (0, 1, 2)), names
    # claim 5 compares at comparable compute: the student's GRPO stopped at the distillation's FLOPs
    stage_runs = {(r.info.run_name, r.data.tags.get("mlflow.parentRunId")): r for r in runs}
    by_id = {r.info.run_id: r for r in runs}
    for seed in (0, 1, 2):
        distill = next(r for (n, parent), r in stage_runs.items()
                       if n == "distill" and by_id[parent].info.run_name == f"ci-cold-start-s{seed}")
        rl = next(r for (n, parent), r in stage_runs.items()
                  if n == "r1_zero" and by_id[parent].info.run_name == f"ci-student-rl-s{seed}")
        assert rl.data.params["grpo.max_train_flops"] == str(distill.data.metrics["train_flops"])
        assert rl.data.metrics["train_flops"] >= distill.data.metrics["train_flops"]
    (report_run,) = [r for r in runs if r.data.tags.get("r1flow.findings") == "ci"]
    logged = {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert logged == {"report/report.md", *(f"report/{p}" for p in PLOTS)}
    assert set(report_run.data.metrics) == {f"verdict/{c}" for c, _ in verdicts}

    again = r1flow(["findings", "--quick", "--name", "ci", "--report-only"], tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (tmp_path / "findings" / "ci" / "report.md").read_text() == report  # from MLflow, nothing retrained
    assert "Beginning subflow" not in again.stdout + again.stderr
    missing = r1flow(["findings", "--quick", "--name", "nobody", "--report-only"], tmp_path, timeout=600)
    assert missing.returncode != 0 and "no run 'nobody-r1-zero-s0'" in missing.stdout + missing.stderr
