"""Scale-out on the ``micro`` pipeline's artifacts (issue 8), through the real CLI, Prefect and
MLflow: generation split into shards and a stage on two processes (DDP through ``accelerate
launch``) in the default run; two machines (machine 1 a follower, ``r1flow.multinode``) and fully
sharded SFT and GRPO (FSDP2) through crashes and resumes in ``make test-scale-out`` (marker
``scaleout``: about 4 minutes more). Each gives what one process gives.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, cli_env, r1flow

pytestmark = pytest.mark.usefixtures("prefect_api")  # the CLI runs go to the server micro_home ran on


def grad_norm(text: str) -> float:
    """The gradient norm logged at the last step (Adam's updates barely show a gradient's scale)."""
    return float(re.findall(r"step 10 .*grad_norm=([0-9.e+-]+)", text)[-1])


def test_killed_or_sharded_rejection_sampling_makes_the_same_dataset(micro_home):
    """Rejection sampling in 4 chunks of 8 prompts, SIGKILLed after its second chunk: the retry
    reuses the two saved chunks and publishes the same dataset, byte for byte, as a run that was
    never interrupted — and so does the same stage split into 3 shards."""
    from r1flow.store_local import LocalStore

    home, _ = micro_home
    args = ["stage", "rejection_sampling", "--preset", "micro", "--name", "first",
            "--set", "rejection_sampling.chunk_prompts=8"]
    straight = r1flow(args, home)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    uri = next(line.split()[-1] for line in straight.stdout.splitlines() if "artifacts/rejection_sampling/" in line)
    store = LocalStore(home / "store")
    want = store.manifest(uri)
    rows = (store.local_path(uri) / "sft.jsonl").read_text()

    marker = home / "rejection-fault-fired"
    out = r1flow([*args, "--refresh"], home, R1FLOW_FAULT_KILL=f"rejection_sampling:2:{marker}")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert marker.exists() and "reused 2 saved chunk(s)" in text and "re-attaching to MLflow run" in text
    got = store.manifest(uri)
    assert got.created != want.created  # published again by the resumed attempt
    assert got.digest == want.digest and (store.local_path(uri) / "sft.jsonl").read_text() == rows

    # Sharded (issue 8): 3 shards, each its own process, generate chunks {0, 3}, {1}, {2} — in
    # whatever order they finish — and the merging run finds all 4 saved: the same bytes again.
    out = r1flow([*args, "--refresh", "--set", "rejection_sampling.launch.shards=3"], home)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "rejection_sampling: 3 shards" in text and "reused 4 saved chunk(s)" in text
    assert all(f"shard {i}/3: rejection sampling shard {i} of 3" in text for i in (1, 2, 3)), text[-3000:]
    assert store.manifest(uri).digest == want.digest and (store.local_path(uri) / "sft.jsonl").read_text() == rows


SFT = ["stage", "sft", "--preset", "micro", "--name", "first", "--set", "sft.train.log_every=5"]


def sft_weights(home, *extra: str, **env: str):
    """(artifact URI, its weights, the run's output) of the micro SFT stage run with ``extra``."""
    from safetensors.torch import load_file

    from r1flow.store_local import LocalStore

    out = r1flow([*SFT, *extra], home, **env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    uri = next(line.split()[-1] for line in out.stdout.splitlines() if "artifacts/sft/" in line)
    return uri, load_file(LocalStore(home / "store").local_path(uri) / "model" / "model.safetensors"), text


def one_process_sft(home):
    """The one-process SFT weights, its output, and how far training moved them from the base."""
    from safetensors.torch import load_file

    uri, one, text = sft_weights(home, "--refresh")
    base = load_file(next((home / "store" / "artifacts" / "base").iterdir()) / "teacher" / "model.safetensors")
    return uri, one, text, max((one[k] - base[k]).abs().max().item() for k in one)


def largest_difference(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_a_stage_on_two_processes_through_the_launcher_trains_the_same_weights(micro_home):
    """DDP through ``accelerate launch`` (``sft.launch.processes: 2``, gloo on CPU): each rank takes
    every other row of a step and the gradients are summed over ranks, so the two-process SFT ends
    at the weights one process reaches (to float noise), publishes one artifact and logs one MLflow
    run, tagged with its world size."""
    from r1flow import mlflow_runs

    home, _ = micro_home
    uri, one, one_text, moved = one_process_sft(home)
    same_uri, two, two_text = sft_weights(home, "--refresh", "--set", "sft.launch.processes=2")
    assert grad_norm(two_text) == pytest.approx(grad_norm(one_text), rel=1e-3)  # summed, not averaged
    assert same_uri == uri  # launch is not in the cache key: the same artifact, re-made on two ranks
    differ = largest_difference(one, two)
    assert moved > 1e-3 and differ < 1e-3 * moved, (moved, differ)  # ranks' halves summed = one batch
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    runs = mlflow_runs.client(tracking).search_runs(
        [mlflow_runs.client(tracking).get_experiment_by_name(mlflow_runs.EXPERIMENT).experiment_id],
        filter_string="tags.`r1flow.world_size` = '2'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags[mlflow_runs.TAG_STAGE] == "sft"


@pytest.mark.scaleout
def test_a_stage_on_two_machines_trains_the_same_weights(micro_home):
    """Two machines of one process each (``launch.machines: 2``): this one runs the flow as machine
    0 and publishes the stage's spec; machine 1 is a follower process (``python -m
    r1flow.multinode``) that runs it as rank 1 and exits once the flow run releases the job. Same
    rows, same sums: the one-process weights again."""
    home, _ = micro_home
    _, one, _, moved = one_process_sft(home)
    job = {"R1FLOW_JOB_ID": "sft-on-two-machines", "R1FLOW_MAIN_PROCESS_IP": "127.0.0.1"}
    follower = subprocess.Popen([sys.executable, "-m", "r1flow.multinode"], cwd=REPO, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=cli_env(home, **job, R1FLOW_MACHINE_RANK="1",
                                                                      R1FLOW_STORE_ROOT=str(home / "store"),
                                                                      R1FLOW_FOLLOW_WAIT_S="300"))
    try:
        _, machines, _ = sft_weights(home, "--refresh", "--set", "sft.launch.machines=2", **job, R1FLOW_MACHINE_RANK="0")
        followed = follower.communicate(timeout=120)[0]
    finally:
        follower.kill()
    assert follower.returncode == 0 and "running the stage spec" in followed and "released by machine 0" in followed, \
        followed[-3000:]
    assert largest_difference(one, machines) < 1e-3 * moved


@pytest.mark.scaleout
def test_sft_fully_sharded_resumes_from_a_gathered_checkpoint_to_the_same_weights(micro_home):
    """FSDP2 over two ranks (``strategy: fsdp``), killed after step 6 of 10 with a checkpoint at
    step 4: the checkpoint is gathered from both shards, the retry shards it back, and the run ends
    at the one-process weights, with the one-process gradient norm (summed, not averaged)."""
    home, _ = micro_home
    _, one, one_text, moved = one_process_sft(home)
    marker = home / "fsdp-fault-fired"
    _, sharded, text = sft_weights(home, "--refresh", "--set", "sft.launch.processes=2", "--set",
                                   "sft.launch.strategy=fsdp", "--set", "sft.checkpoint_every=4",
                                   R1FLOW_FAULT_KILL=f"sft:6:{marker}")
    assert marker.exists() and "resuming from checkpoint" in text and "step-00000004" in text, text[-3000:]
    assert grad_norm(text) == pytest.approx(grad_norm(one_text), rel=1e-3)
    assert largest_difference(one, sharded) < 1e-3 * moved


@pytest.mark.scaleout
def test_grpo_fully_sharded_through_the_launcher_publishes_the_whole_policy(micro_home):
    """R1-Zero with ``strategy: fsdp`` on two ranks: rollouts and evaluations come from a whole copy
    of the policy, refreshed from the shards after every step; a checkpoint is gathered at step 2,
    the stage is killed after step 3 and resumes from it; the published model is that copy, equal
    to the model two data-parallel ranks publish (the same prompts per rank).
    ``tests/test_distributed.py`` checks a sharded GRPO step's math against one process; this
    checks the plumbing around it."""
    from safetensors.torch import load_file

    from r1flow.store_local import LocalStore

    home, _ = micro_home
    store = LocalStore(home / "store")
    args = ["stage", "r1_zero", "--preset", "micro", "--name", "first"]

    def published(out):
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        uri = next(line.split()[-1] for line in out.stdout.splitlines() if "artifacts/r1_zero/" in line)
        return uri, load_file(store.local_path(uri) / "model" / "model.safetensors")

    two_ranks = [*args, "--refresh", "--set", "r1_zero.launch.processes=2"]
    uri, one = published(r1flow(two_ranks, home))
    marker = home / "fsdp-grpo-fault-fired"  # killed after step 3 of 3, resumed from the step-2 checkpoint
    sharded = r1flow([*two_ranks, "--set", "r1_zero.launch.strategy=fsdp", "--set", "r1_zero.checkpoint_every=2"],
                     home, R1FLOW_FAULT_KILL=f"r1_zero:3:{marker}")
    same_uri, two = published(sharded)
    assert marker.exists() and "step-00000002" in sharded.stdout + sharded.stderr
    assert same_uri == uri
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)
