"""The ``micro`` pipeline end to end through Prefect, MLflow and the local store.

One real run of the whole DAG (each stage its own process), then a second run with the same
config that must skip every stage as ``Cached`` in the Prefect API and start no stage process,
then a changed stage config that re-runs exactly that stage and those downstream.
"""

from __future__ import annotations

import pytest

from r1flow.config import STAGES
from tests.conftest import REPO, r1flow
from tests.prefect_states import flow_run_id, prefect_states

pytestmark = pytest.mark.usefixtures("prefect_api")  # one real Prefect server for the module's runs

DOWNSTREAM_OF_SFT = {"sft", "final_rl"}

def _mlflow(home):
    from r1flow import mlflow_runs

    return mlflow_runs, f"sqlite:///{home / 'mlflow.db'}"


def test_micro_pipeline_tracks_every_stage(micro_home):
    home, first = micro_home
    mlflow_runs, uri = _mlflow(home)
    parent = mlflow_runs.find_pipeline_runs(uri, "first")[0]
    assert parent.info.status == "FINISHED"
    children = mlflow_runs.child_runs(uri, parent)
    assert sorted(c.data.tags[mlflow_runs.TAG_STAGE] for c in children) == sorted(STAGES)
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        tags = child.data.tags
        assert tags["r1flow.git_commit"] and tags["r1flow.lock_digest"]
        assert child.data.params, "stage config logged as params"
        assert any(k.startswith("eval/") for k in child.data.metrics) or tags[mlflow_runs.TAG_STAGE] in (
            "rejection_sampling", "reward_model")
    rl = next(c for c in children if c.data.tags[mlflow_runs.TAG_STAGE] == "reasoning_rl")
    for key in ("reward/mean", "reward/accuracy/mean", "reward/language/mean", "clip_fraction",
                "response_length/mean", "eval/arith_heldout/pass_at_1", "eval_gain/arith_heldout/pass_at_1"):
        assert key in rl.data.metrics, key
    states = prefect_states(home, flow_run_id(first.stdout))
    assert states["flow"] == "Completed"
    assert set(states["tasks"].values()) == {"Completed"}
    # progress: the terminal (not a TTY here: log lines) and a Prefect progress artifact per stage
    assert "stage reasoning_rl: GRPO step 3 of 3 · ETA 0 s · reward" in first.stdout + first.stderr
    done = {description for data, description in states["progress"] if data == 100.0}
    assert any(d.startswith("stage r1_zero: GRPO step 3 of 3 · ETA 0 s · reward") for d in done), states["progress"]
    assert any(d.startswith("stage base: student/SFT step 30 of 30") for d in done), states["progress"]


def test_every_dataset_is_an_mlflow_input_with_its_digest_and_system_metrics_are_on(micro_home):
    """Each stage run lists the datasets it read (and wrote, context ``output``) by digest: the SFT
    data rejection sampling wrote is, byte for byte, what SFT and distillation trained on."""
    import json

    from r1flow.data.io import dataset_digest, read_jsonl

    home, _ = micro_home
    mlflow_runs, uri = _mlflow(home)
    client = mlflow_runs.client(uri)
    parent = mlflow_runs.find_pipeline_runs(uri, "first")[-1]  # the oldest "first": the one that ran every stage
    runs = {c.data.tags[mlflow_runs.TAG_STAGE]: client.get_run(c.info.run_id) for c in mlflow_runs.child_runs(uri, parent)}
    datasets = {stage: {(d.dataset.name, next(t.value for t in d.tags if t.key == "mlflow.data.context")):
                        json.loads(d.dataset.profile)["sha256"] for d in run.inputs.dataset_inputs}
                for stage, run in runs.items()}
    written = read_jsonl(next((home / "store" / "artifacts" / "rejection_sampling").iterdir()) / "sft.jsonl", {})
    assert datasets["rejection_sampling"][("rejection_sampling/sft.jsonl", "output")] == dataset_digest(written)
    for stage in ("sft", "distill"):
        assert datasets[stage][("rejection_sampling/sft.jsonl", "training")] == dataset_digest(written)
    assert ("prompts/arith", "training") in datasets["reasoning_rl"]
    assert ("preference_pairs/train", "training") in datasets["reward_model"]
    assert {stage for stage, d in datasets.items() if ("benchmark/arith_heldout", "evaluation") in d} == \
        set(STAGES) - {"rejection_sampling", "reward_model"}
    assert all(any(k.startswith("system/cpu_utilization") for k in run.data.metrics) for run in runs.values())


def test_every_artifact_has_a_verified_manifest(micro_home):
    home, _ = micro_home
    from r1flow.store import open_store

    store = open_store(home / "store")
    keys = [k for k in store.keys("artifacts/")]
    stages = {k.split("/")[1] for k in keys}
    assert stages == set(STAGES)
    for key in keys:
        assert store.verify(key, deep=True), key


def test_second_run_is_cached_and_starts_no_stage(micro_home):
    home, _ = micro_home
    second = r1flow(["run", "--preset", "micro", "--name", "second"], home)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    states = prefect_states(home, flow_run_id(second.stdout))
    assert states["tasks"] and set(states["tasks"].values()) == {"Cached"}, states
    mlflow_runs, uri = _mlflow(home)
    parent = mlflow_runs.find_pipeline_runs(uri, "second")[0]
    assert mlflow_runs.child_runs(uri, parent) == []  # no stage process, no stage run
    assert {parent.data.tags[f"r1flow.stage.{s}.state"] for s in STAGES} == {"cached"}
    status = r1flow(["status", "second"], home)
    assert status.returncode == 0 and status.stdout.count("cached") == len(STAGES), status.stdout


def test_reusing_a_name_adds_a_run_under_it(micro_home):
    """``--name`` labels runs, it does not key them: the same name again is a new MLflow parent run
    (status/report/resume read the newest), the stages are reused by their cache keys, and a run
    that finished has nothing to resume."""
    home, _ = micro_home
    again = r1flow(["run", "--preset", "micro", "--name", "first"], home)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    mlflow_runs, uri = _mlflow(home)
    runs = mlflow_runs.find_pipeline_runs(uri, "first")
    assert len(runs) >= 2 and runs[0].info.run_id in again.stdout
    assert {runs[0].data.tags[f"r1flow.stage.{s}.state"] for s in STAGES} == {"cached"}
    status = r1flow(["status", "first"], home)
    assert runs[0].info.run_id in status.stdout
    resume = r1flow(["resume", "first"], home)
    assert resume.returncode == 0 and "nothing to resume" in resume.stdout


def test_changed_stage_reruns_it_and_downstream_only(micro_home):
    home, _ = micro_home
    third = r1flow(["run", "--preset", "micro", "--name", "third", "--set", "sft.train.lr=0.0004"], home)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    mlflow_runs, uri = _mlflow(home)
    parent = mlflow_runs.find_pipeline_runs(uri, "third")[0]
    states = {s: parent.data.tags[f"r1flow.stage.{s}.state"] for s in STAGES}
    assert {s for s, v in states.items() if v == "done"} == DOWNSTREAM_OF_SFT, states
    report = r1flow(["report", "first"], home)
    assert report.returncode == 0 and "| reasoning_rl |" in report.stdout, report.stdout


def test_deleted_artifact_is_detected_and_its_stage_reruns(micro_home):
    home, _ = micro_home
    from r1flow.store import MANIFEST

    distill = next((home / "store" / "artifacts" / "distill").iterdir())
    (distill / MANIFEST).unlink()  # the artifact no longer exists
    fourth = r1flow(["run", "--preset", "micro", "--name", "fourth"], home)
    assert fourth.returncode == 0, fourth.stdout[-3000:] + fourth.stderr[-3000:]
    mlflow_runs, uri = _mlflow(home)
    parent = mlflow_runs.find_pipeline_runs(uri, "fourth")[0]
    states = {s: parent.data.tags[f"r1flow.stage.{s}.state"] for s in STAGES}
    assert {s for s, v in states.items() if v == "done"} == {"distill"}, states
    assert (distill / MANIFEST).exists()


def test_one_stage_flow_reuses_the_inputs_of_a_named_run(micro_home):
    home, _ = micro_home
    out = r1flow(["stage", "distill", "--preset", "micro", "--name", "first", "--refresh"], home)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "distill" in out.stdout and "artifacts/distill/" in out.stdout
    missing = r1flow(["stage", "sft", "--preset", "micro", "--name", "never-ran"], home)
    assert missing.returncode == 2 and "never-ran" in missing.stderr


def test_a_killed_stage_is_retried_and_resumes_from_its_checkpoint(micro_home):
    """SIGKILL in the middle of r1_zero's GRPO (after its checkpoint at step 2): the Prefect task
    retries the crash, the new process resumes from that checkpoint and logs into the same MLflow
    run, which ends FINISHED with every step's metrics."""
    from r1flow import mlflow_runs

    home, _ = micro_home
    marker = home / "fault-fired"
    out = r1flow(["stage", "r1_zero", "--preset", "micro", "--name", "first", "--refresh",
                  "--set", "r1_zero.checkpoint_every=1", "--set", "r1_zero.grpo.log_every=1"], home,
                 R1FLOW_FAULT_KILL=f"r1_zero:2:{marker}")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert marker.exists()  # the fault fired: the first attempt died after step 2
    assert "resuming from checkpoint" in text and "step-00000002" in text
    assert "re-attaching to MLflow run" in text
    c = mlflow_runs.client(f"sqlite:///{home / 'mlflow.db'}")
    runs = [r for r in c.search_runs([e.experiment_id for e in c.search_experiments()],
                                     "tags.`r1flow.resumes` = '1'")]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in c.get_metric_history(runs[0].info.run_id, "reward/mean")]
    assert sorted(set(steps)) == [1, 2, 3]


def test_registered_candidate_is_evaluated_by_the_evaluation_flow(micro_home):
    """The pipeline registered its final model and student by reference (alias ``candidate``);
    the evaluation flow resolves ``models:/…@candidate`` to that store artifact, evaluates it (its
    metrics land on the version as tags), and the same model named as ``run:NAME`` is a cache hit."""
    from r1flow import registry

    home, _ = micro_home
    mlflow_runs, uri = _mlflow(home)
    candidate = registry.resolve(uri, "models:/r1flow-micro@candidate")
    student = registry.resolve(uri, "models:/r1flow-micro-student@candidate")
    assert "/artifacts/final_rl/" in candidate.source and "/artifacts/distill/" in student.source
    assert candidate.digest and not (home / "store" / "artifacts" / "evaluation").exists()

    nightly = r1flow(["evaluate", "models:/r1flow-micro@candidate", "--preset", "micro", "--name", "nightly"], home)
    assert nightly.returncode == 0, nightly.stdout[-3000:] + nightly.stderr[-3000:]
    parent = mlflow_runs.find_pipeline_runs(uri, "nightly")[0]
    (child,) = mlflow_runs.child_runs(uri, parent)
    assert child.data.tags["r1flow.evaluated_uri"] == candidate.source
    assert 0.0 <= child.data.metrics["eval/arith_heldout/pass_at_1"] <= 1.0
    tags = mlflow_runs.client(uri).get_model_version("r1flow-micro", candidate.version).tags
    assert tags["r1flow.evaluated.run"] == child.info.run_id
    assert float(tags["r1flow.evaluated.arith_heldout.pass_at_1"]) == pytest.approx(
        child.data.metrics["eval/arith_heldout/pass_at_1"], abs=1e-5)
    assert "r1flow.eval.arith_heldout.pass_at_1" in tags  # the final_rl stage's own evaluation

    # the newest run, "fourth", re-registered the final model of "first" (a cache hit) as candidate
    assert mlflow_runs.find_pipeline_runs(uri, "fourth")[0].data.tags["r1flow.stage.final_rl.uri"] == candidate.source
    again = r1flow(["evaluate", "run:fourth", "--preset", "micro", "--name", "by-run"], home)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert mlflow_runs.find_pipeline_runs(uri, "by-run")[0].data.tags["r1flow.stage.evaluation.state"] == "cached"

    missing = r1flow(["evaluate", "models:/r1flow-micro@nope", "--preset", "micro"], home)
    assert missing.returncode == 2 and "models:/r1flow-micro@nope" in missing.stderr, missing.stderr[-2000:]


def test_first_model_is_champion_and_later_ones_are_decided_by_the_rule(micro_home):
    """The first registered final model became champion (there was none); the "third" run's
    (another SFT lr) was decided by the rule with its numbers recorded; ``r1flow promote`` then
    makes it champion by hand."""
    from r1flow import registry

    home, _ = micro_home
    mlflow_runs, uri = _mlflow(home)
    first = registry.resolve(uri, "models:/r1flow-micro/1")
    assert first.tags["r1flow.promotion.decision"] == "promoted" and "no champion" in first.tags["r1flow.promotion.reason"]
    assert first.tags["r1flow.promotion.benchmark_digest"] == first.tags["r1flow.eval.arith_heldout.digest"]
    third_uri = mlflow_runs.find_pipeline_runs(uri, "third")[0].data.tags["r1flow.stage.final_rl.uri"]
    (third,) = [registry.resolve(uri, f"models:/r1flow-micro/{v.version}")
                for v in mlflow_runs.client(uri).search_model_versions("name = 'r1flow-micro'") if v.source == third_uri]
    # decided against v1, the champion then, on the same benchmark digest, with the stages' own numbers
    assert third.tags["r1flow.promotion.champion_version"] == first.version
    assert third.tags["r1flow.promotion.benchmark_digest"] == first.tags["r1flow.eval.arith_heldout.digest"]
    values = {}
    for version, run in ((first, "first"), (third, "third")):
        final_rl_run = mlflow_runs.find_pipeline_runs(uri, run)[-1].data.tags["r1flow.stage.final_rl.run"]
        values[version.version] = mlflow_runs.client(uri).get_run(final_rl_run).data.metrics["eval/arith_heldout/pass_at_1"]
    assert float(third.tags["r1flow.promotion.candidate_value"]) == pytest.approx(values[third.version], abs=1e-5)
    assert float(third.tags["r1flow.promotion.champion_value"]) == pytest.approx(values[first.version], abs=1e-5)
    gain = values[third.version] - values[first.version]
    assert third.tags["r1flow.promotion.decision"] == ("promoted" if gain >= 0.01 - 1e-9 else "kept"), third.tags
    out = r1flow(["promote", "r1flow-micro", third.version, "--reason", "picked in review"], home)
    assert out.returncode == 0, out.stderr[-2000:]
    champion = registry.resolve(uri, "models:/r1flow-micro@champion")
    assert champion.version == third.version and champion.tags["r1flow.promotion.reason"] == "picked in review"
    assert "r1flow.promotion.candidate_value" not in champion.tags  # the rule's numbers no longer explain it


def test_compare_two_runs_table_plots_and_mlflow(micro_home):
    """``r1flow compare first third``: a row per (stage, metric) with both runs' values, read from
    the runs that produced each stage; curves overlaid per RL stage; all logged to MLflow."""
    home, _ = micro_home
    mlflow_runs, uri = _mlflow(home)
    out = r1flow(["compare", "first", "third", "--format", "markdown", "--out", str(home / "cmp")], home)
    assert out.returncode == 0, out.stderr[-3000:]
    table = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
             for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| stage")}
    client = mlflow_runs.client(uri)
    from flows.compare import stage_runs

    for name, column in (("first", 2), ("third", 3)):
        parent, stages = stage_runs(uri, name)  # the newest *pipeline* run of the name, not a one-stage run
        assert parent.data.tags["r1flow.flow"] == "r1-pipeline"
        sft = client.get_run(stages["sft"]).data.metrics
        cell = table[("sft", "eval/arith_heldout/pass_at_1")].strip("|").split("|")[column].strip()
        assert float(cell) == pytest.approx(sft["eval/arith_heldout/pass_at_1"], rel=1e-3, abs=1e-4)
    assert ("reasoning_rl", "reward/mean") in table and ("base", "eval/arith_heldout/pass_at_1") in table
    pngs = sorted(p.name for p in (home / "cmp").glob("*.png"))
    assert pngs == ["compare_final_rl.png", "compare_r1_zero.png", "compare_reasoning_rl.png"]
    assert all((home / "cmp" / p).stat().st_size > 10_000 for p in pngs)
    (run,) = client.search_runs([parent.info.experiment_id], "tags.`r1flow.compare` = 'first,third'")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "compare")}
    assert {"compare/compare.md", "compare/compare.csv", "compare/compare_final_rl.png"} <= logged

    missing = r1flow(["compare", "first", "never-ran"], home)
    assert missing.returncode == 2 and "never-ran" in missing.stderr


BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "test-output" / "browser"


def test_mlflow_and_prefect_uis_show_the_run_in_a_real_browser(micro_home, prefect_api, tmp_path):
    """Headless Debian Chromium (driven by Playwright, its own browser download not used) opens the
    first run in a real ``mlflow server``'s UI — the parent run lists every stage as a child run —
    and in the Prefect server's UI — the flow run's artifacts tab lists every stage's summary.
    The screenshots are kept in test-output/browser/."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency: make install")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    from tests.mlflowserver import Server

    home, first = micro_home
    mlflow_runs, uri = _mlflow(home)
    parent = mlflow_runs.find_pipeline_runs(uri, "first")[-1]  # the run that ran every stage
    server = Server(tmp_path)
    server.start(db=home / "mlflow.db")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server.uri}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}")
            page.get_by_text("Child runs", exact=True).wait_for(timeout=60_000)
            for stage in STAGES:
                page.get_by_role("link", name=stage, exact=True).wait_for(timeout=10_000)
            page.screenshot(path=SCREENSHOTS / "mlflow-parent-run.png", full_page=True)

            page.goto(f"{prefect_api.removesuffix('/api')}/runs/flow-run/{flow_run_id(first.stdout)}")
            page.get_by_text("Artifacts", exact=True).first.click(timeout=60_000)
            for stage in STAGES:
                page.get_by_text(f"first-{stage.replace('_', '-')}", exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=SCREENSHOTS / "prefect-flow-run-artifacts.png", full_page=True)
            browser.close()
    finally:
        server.stop()
    assert all((SCREENSHOTS / f).stat().st_size > 20_000
               for f in ("mlflow-parent-run.png", "prefect-flow-run-artifacts.png"))
