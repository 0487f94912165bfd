"""What a resume decides from: run records, config diffs, what a crashed attempt saved, warm starts
under a changed config, and saved generation chunks (local store; the S3 store shares the code)."""

from __future__ import annotations

import pytest
import torch

from r1flow import lineage
from r1flow.checkpoint import Checkpointer, checkpoint_prefix, clear_saved, newest_saved
from r1flow.chunks import ChunkLog
from r1flow.store import MissingArtifact
from r1flow.store_local import LocalStore


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def attempt(key="k1", lr=1e-4, inputs=None, code="c1", status="running", **kw) -> lineage.StageAttempt:
    return lineage.StageAttempt(stage="r1_zero", key=key, config={"grpo": {"lr": lr, "steps": 3}},
                                runtime={"seed": 0}, inputs=inputs or {"policy": "d1"}, code=code,
                                status=status, **kw)


def test_config_diff_names_every_changed_leaf():
    old = {"grpo": {"lr": 1e-4, "beta": 0.0}, "template": "r1", "gone": 1}
    new = {"grpo": {"lr": 1e-3, "beta": 0.0}, "template": "r1", "added": [1]}
    assert lineage.config_diff(old, new) == ["added: (unset) -> [1]", "gone: 1 -> (unset)",
                                             "grpo.lr: 0.0001 -> 0.001"]
    assert lineage.config_diff(old, old) == []


def test_changed_since_says_what_changed_beyond_the_config():
    changes = lineage.changed_since(attempt(), attempt(lr=1e-3, inputs={"policy": "d2"}, code="c2"))
    assert changes[0] == "grpo.lr: 0.0001 -> 0.001"
    assert any("input(s) policy changed" in c for c in changes)
    assert any(c.startswith("library code version") for c in changes)
    assert lineage.changed_since(attempt(), attempt()) == []


def test_records_round_trip_and_names_cannot_escape_the_store(store):
    record = lineage.PipelineRecord(name="n1", flow="r1-pipeline", config={"seed": 0}, parent_run_id="p")
    lineage.write_pipeline(store, record)
    lineage.write_attempt(store, "n1", attempt())
    assert lineage.read_pipeline(store, "n1").parent_run_id == "p"
    assert lineage.read_attempt(store, "n1", "r1_zero").key == "k1"
    assert lineage.read_pipeline(store, "other") is None
    for bad in ("../x", "a/b", "", "-x", "x" * 101):
        with pytest.raises(ValueError, match="run name"):
            lineage.check_name(bad)


def _linear():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / 10)
    return model, opt, sched


def _step(model, opt, sched):
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    opt.zero_grad()
    sched.step()


def test_crashed_checkpoint_is_what_an_unfinished_attempt_saved(store):
    output = "artifacts/r1_zero/k1"
    model, opt, sched = _linear()
    Checkpointer(store, checkpoint_prefix(output), every=1).save(2, model=model, optimizer=opt,
                                                                 scheduler=sched, extra={})
    prefix, saved = lineage.crashed_checkpoint(store, attempt(), output)
    assert prefix == "checkpoints/r1_zero/k1" and saved.endswith("step-00000002")
    assert lineage.crashed_checkpoint(store, attempt(status="done"), output) is None
    assert lineage.crashed_checkpoint(store, None, output) is None
    assert newest_saved(store, prefix)[0].endswith("step-00000002")
    assert clear_saved(store, prefix) == 1 and lineage.crashed_checkpoint(store, attempt(), output) is None


def test_warm_start_keeps_weights_and_moments_but_takes_the_new_hyperparameters(store):
    """A checkpoint of an attempt trained at lr 1e-2 (weight decay 0.1), continued by one
    configured with lr 1e-3 (weight decay 0.0): weights, Adam moments and the step come from the
    checkpoint; lr = 1e-3 × schedule(step 3) = 1e-3 × 0.7 and weight decay 0 are the new config's."""
    model, opt, sched = _linear()
    for _ in range(3):
        _step(model, opt, sched)
    Checkpointer(store, "checkpoints/old", every=1).save(3, model=model, optimizer=opt, scheduler=sched, extra={"x": 1})

    fresh = torch.nn.Linear(3, 2)
    new_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3, weight_decay=0.0)
    new_sched = torch.optim.lr_scheduler.LambdaLR(new_opt, lambda s: 1.0 - s / 10)
    restored = Checkpointer(store, "checkpoints/new", every=1, warm_start="checkpoints/old",
                            log=lambda m: None).restore(model=fresh, optimizer=new_opt, scheduler=new_sched)
    assert restored.step == 3 and restored.extra == {"x": 1}
    assert torch.equal(fresh.weight, model.weight)
    state = new_opt.state[new_opt.param_groups[0]["params"][0]]
    assert torch.equal(state["exp_avg"], opt.state[opt.param_groups[0]["params"][0]]["exp_avg"])
    assert new_opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.7)
    assert new_opt.param_groups[0]["weight_decay"] == 0.0 and new_sched.base_lrs == [1e-3]

    same_opt = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    same_sched = torch.optim.lr_scheduler.LambdaLR(same_opt, lambda s: 1.0 - s / 10)
    Checkpointer(store, "checkpoints/old", every=1, log=lambda m: None).restore(
        model=torch.nn.Linear(3, 2), optimizer=same_opt, scheduler=same_sched)
    assert same_opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.7)  # its own: the saved lr


def test_saved_chunks_are_reused_and_a_corrupt_one_is_generated_again(store):
    warnings: list[str] = []
    chunks = ChunkLog(store, "checkpoints/rs/k1", log=warnings.append, meta={"mlflow_run_id": "r"})
    rows = [[{"q": f"{i}-{j}", "completion": "ü é"} for j in range(3)] for i in range(3)]
    for i, r in enumerate(rows):
        chunks.save(i, r)
    assert [chunks.load(i) for i in range(3)] == rows and chunks.load(3) is None
    assert newest_saved(store, "checkpoints/rs/k1")[1]["mlflow_run_id"] == "r"
    path = store.local_path("checkpoints/rs/k1/chunks/chunk-000001") / "rows.jsonl"
    path.write_text(path.read_text()[:-5])  # truncated
    assert chunks.load(1) is None and "corrupt" in warnings[0]
    continued = ChunkLog(store, "checkpoints/rs/k2", warm_start="checkpoints/rs/k1")
    assert continued.load(0) == rows[0] and continued.loaded == 1
    with pytest.raises(MissingArtifact):
        store.manifest("checkpoints/rs/k2/chunks/chunk-000000")  # read from the warm start, not copied


def test_a_resumed_run_keeps_its_params_and_tags_a_changed_setting(tmp_path):
    """MLflow params are immutable: re-logging on a re-attached run adds the new ones and records a
    changed cache-excluded setting (e.g. checkpoint_every) as a tag instead of failing."""
    from r1flow import mlflow_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = mlflow_runs.client(uri)
    run = c.create_run(c.create_experiment("p")).info.run_id
    mlflow_runs.log_params(uri, run, {"checkpoint_every": "1", "grpo.lr": "0.001"})
    mlflow_runs.log_params(uri, run, {"checkpoint_every": "5", "grpo.lr": "0.001", "new": "x"})
    data = c.get_run(run).data
    assert data.params == {"checkpoint_every": "1", "grpo.lr": "0.001", "new": "x"}
    assert data.tags["r1flow.param_changed.checkpoint_every"] == "5"


def test_launch_job_variables_refuse_credentials():
    from r1flow.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY' looks like a credential"):
        load_config("micro", sets=["sft.launch.job_variables={env: {AWS_SECRET_ACCESS_KEY: x}}"])
    assert load_config("micro", sets=["sft.launch.job_variables={gpus: 2}"]).sft.launch.job_variables == {"gpus": 2}


def test_a_full_disk_is_recognised_when_a_library_wraps_it():
    from r1flow.diskspace import DiskFull, disk_writes, is_disk_full

    with pytest.raises(DiskFull, match="disk full while writing the model"):
        with disk_writes("the model", "/tmp"):
            try:
                raise OSError(28, "No space left on device")
            except OSError as exc:
                raise RuntimeError("PytorchStreamWriter failed writing file data/0") from exc
    assert not is_disk_full(RuntimeError("shape mismatch"))
