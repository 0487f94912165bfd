"""The paper-findings flow end to end at CI size (``r1flow findings --quick``, about 80 s here):
three seeds of the R1-Zero arm in one MLflow experiment, a report with the verdicts of claims
1–2 and the claims not run yet, curves, all logged to MLflow. ``make test-slow``."""

from __future__ import annotations

import pytest

from tests.conftest import r1flow


@pytest.mark.slow
def test_quick_findings_report(tmp_path):
    out = r1flow(["findings", "--quick", "--name", "ci"], tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (tmp_path / "findings" / "ci" / "report.md").read_text()
    assert "seeds [0, 1, 2]" in report and "--quick run" in report
    assert report.count("reproduced") == 2 and "## Not run yet" in report and "Table 6" in report
    assert (tmp_path / "findings" / "ci" / "r1_zero_curves.png").stat().st_size > 10_000

    from r1flow import mlflow_runs

    client = mlflow_runs.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("r1flow-findings")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("r1flow.flow") == "r1-zero"]
    assert sorted(r.data.params["seed"] for r in parents) == ["0", "1", "2"]
    (report_run,) = [r for r in runs if r.data.tags.get("r1flow.findings") == "ci"]
    logged = {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert logged == {"report/report.md", "report/r1_zero_curves.png"}
