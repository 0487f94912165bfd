"""A full disk, for real: small tmpfs mounts (root only; skipped otherwise).

- A large write that cannot fit is refused before a byte is written, naming what, where and the
  space needed and free.
- A write the check could not foresee (the disk filled by someone else) hits ENOSPC: it becomes
  ``DiskFull`` naming the file, its temp file is removed, the previous version stays intact.
- A stage whose work folder fills up stops with a clear error, is not retried (the retry would meet
  the same disk), its MLflow run ends FAILED and nothing is published.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from r1flow.diskspace import DiskFull
from r1flow.store_local import LocalStore
from tests.conftest import r1flow

pytestmark = pytest.mark.faults


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {out.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    _mount(disk, "2m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_large_write_that_cannot_fit_is_refused_before_writing(small_disk, tmp_path, monkeypatch):
    monkeypatch.setenv("R1FLOW_MIN_FREE_MB", "0")
    src = tmp_path / "artifact"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(3 << 20))
    store = LocalStore(small_disk / "store")
    store.check()
    with pytest.raises(DiskFull, match=r"needs 3\.0 MB, 2\.0 MB free") as err:
        store.put_dir(src, "artifacts/x")
    assert str(small_disk / "store") in str(err.value)
    assert [p.name for p in (small_disk / "store").rglob("*") if p.is_file()] == [".check"]

    monkeypatch.setenv("R1FLOW_MIN_FREE_MB", "1.5")  # the reserve counts too
    (src / "weights.bin").write_bytes(os.urandom(1 << 20))
    with pytest.raises(DiskFull, match="kept in reserve"):
        store.put_dir(src, "artifacts/x")


def test_enospc_mid_write_is_a_clear_error_and_leaves_the_old_version(small_disk, monkeypatch):
    monkeypatch.setenv("R1FLOW_MIN_FREE_MB", "0")
    store = LocalStore(small_disk / "store")
    store.write_json("runs/r/pipeline.json", {"status": "running"})
    (small_disk / "filler").write_bytes(b"\0" * ((2 << 20) - (200 << 10)))  # someone else fills the disk
    with pytest.raises(DiskFull, match="disk full while writing pipeline.json"):
        store.write_json("runs/r/pipeline.json", {"status": "x" * (600 << 10)})
    assert store.read_json("runs/r/pipeline.json") == {"status": "running"}
    assert not [p for p in (small_disk / "store").rglob(".*tmp-*")]  # no temp file left behind


def test_a_stage_that_fills_its_disk_fails_clearly_once(tmp_path):
    from r1flow import mlflow_runs

    home = tmp_path / "home"
    _mount(home / "work", "48k")  # the stage's work folder: too small for the base models
    try:
        out = r1flow(["r1-zero", "--preset", "micro", "--name", "full"], home, R1FLOW_MIN_FREE_MB="0")
    finally:
        subprocess.run(["umount", "-l", str(home / "work")], check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-4000:]
    assert "ran out of disk space" in text and "MB free" in text
    c = mlflow_runs.client(f"sqlite:///{home / 'mlflow.db'}")
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.`r1flow.stage` = 'base'")
    assert [r.info.status for r in runs] == ["FAILED"]  # one attempt: a retry would open a second run
    assert not list((home / "store").glob("artifacts/base/*/manifest.json"))
