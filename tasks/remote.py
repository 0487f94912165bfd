"""A stage as a flow run of its deployment on another work pool (``launch.kind: deployment``),
e.g. a GPU pool with one worker per GPU host.

Both sides compute the stage's cache key; the child is told the key and code version the
pipeline expects and refuses at once when its own differ (another r1flow on the GPU pool), so a
mismatch is not found only after hours of training. The output is found in the shared store
under that key. The child run belongs to the pipeline: when ``launch.timeout_s`` passes, or the
pipeline is cancelled or killed, the child is cancelled too; a child cancelled by a person is a
decision, not a crash, and is not retried; nor is one whose stage's own code raised
(``StageFailed``): the same inputs fail the same way on any worker.

Sharded generation (``launch.shards`` = N, arXiv 2501.12948 §2.3.3 at scale): N flow runs, shard i
generating the prompt chunks c with c mod N = i (``r1flow.chunks``), go to the pool at once, so N
free workers run them side by side; each is resumable on its own (a re-run reuses its saved
chunks). When all completed, one more flow run merges: it finds every chunk saved, filters and
publishes — the same dataset whatever N, and whichever shard ran first. One failing shard
cancels its siblings.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType

from r1flow.cache import code_version
from r1flow.launcher import StageCrashed, StageFailed, StageInputError
from r1flow.runtime import Runtime
from r1flow.store import ArtifactRef
from tasks.stage import key_from_params, published, retry_crashes_only

POLL_S = 2.0
API_GRACE_S = 600.0  # how long the Prefect API may be away while a stage runs elsewhere
REFUSALS = ("StageInputError", "StageDiskFull", "ConfigChanged", "ConfigError", "KeyMismatch")


class StageTimedOut(RuntimeError):
    """The stage's flow run did not finish within ``launch.timeout_s``; it was cancelled."""


class StageCancelled(RuntimeError):
    """Someone cancelled the stage's flow run; the pipeline stops rather than retry it."""


@task(name="stage-on-pool", task_run_name="{stage}", cache_key_fn=key_from_params, persist_result=True,
      retries=1, retry_delay_seconds=2, retry_condition_fn=retry_crashes_only)
def run_stage_deployment(stage: str, key: str, launch: dict[str, Any], flow_parameters: dict[str, Any],
                         runtime: Runtime, fresh: bool = False) -> ArtifactRef:
    """Run ``stage`` as a flow run of ``launch.deployment`` and return what it published; with
    ``launch.shards`` = N, first N shard flow runs (each generating the chunks c mod N = i), then
    the merging one, which reuses their chunks."""
    store = runtime.store()
    output_key = runtime.output_key(stage, key)
    if not fresh and (ref := published(stage, store, output_key)):
        return ref
    name = launch["deployment"].format(stage=stage)
    parameters = {**flow_parameters, "expected": {"key": key, "code": code_version(stage)}}
    shards = int(launch.get("shards", 1))
    if shards > 1:  # one flow run per shard, on as many of the pool's workers as are free
        run_flows(stage, name, {f"shard-{i + 1}-of-{shards}": {**parameters, "shard": [i, shards]}
                                for i in range(shards)}, launch)
    run_flows(stage, name, {"merge" if shards > 1 else "": parameters}, launch)  # merges the shards' chunks
    if not store.verify(output_key):
        raise StageCrashed(f"stage {stage} on deployment {name} completed but published nothing at "
                           f"{store.resolve(output_key)}: do both pools share the store?")
    return store.ref(output_key)


def run_flows(stage: str, deployment: str, runs: dict[str, dict[str, Any]], launch: dict[str, Any]) -> None:
    """Start one flow run of ``deployment`` per entry of ``runs`` (label: parameters), all at once,
    and wait until every one completed. The first that fails or is cancelled stops the others."""
    from prefect.deployments import run_deployment

    started: dict[UUID, str] = {}
    try:
        for label, parameters in runs.items():
            flow_run = run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=True,
                                      flow_run_name=f"{stage}-{label}" if label else None,
                                      job_variables=launch.get("job_variables") or None)
            started[flow_run.id] = f"stage {stage}{' ' + label if label else ''} on deployment {deployment} " \
                                   f"(flow run {flow_run.id})"
            get_run_logger().info("%s: started", started[flow_run.id])
        states = wait_all(list(started), launch.get("timeout_s"))
    except BaseException:  # the pipeline is cancelled or killed (or lost its API): the stage must not go on
        for flow_run_id in started:
            cancel(flow_run_id, "the pipeline that launched it stopped")
        raise
    failed = any(state.type != StateType.COMPLETED for state in states.values())
    for flow_run_id in started.keys() - states.keys():  # still running: a sibling failed, or time is up
        why = "a sibling shard failed" if failed else f"launch.timeout_s={launch.get('timeout_s')} passed"
        cancel(flow_run_id, why)
    for flow_run_id, state in states.items():
        where = started[flow_run_id]
        if state.type in (StateType.CANCELLED, StateType.CANCELLING):
            raise StageCancelled(f"{where} was cancelled ({state.message or 'by a user'}); not retried")
        if state.type != StateType.COMPLETED:
            message = state.message or state.name
            if any(kind in message for kind in REFUSALS):
                raise StageInputError(f"{where} failed: {message}")
            if StageFailed.__name__ in message:  # its code raised: the same inputs fail the same way
                raise StageFailed(f"{where} failed: {message}")
            raise StageCrashed(f"{where} ended {state.name}: {message}")
    if len(states) < len(started):
        raise StageTimedOut(f"stage {stage} on deployment {deployment} did not finish within launch.timeout_s="
                            f"{launch.get('timeout_s')} s and was cancelled; `r1flow resume` continues it from its "
                            "newest checkpoint")


def wait_all(flow_run_ids: list[UUID], timeout_s: float | None,
             api_grace_s: float = API_GRACE_S) -> dict[UUID, State]:
    """The final states of the flow runs, gathered until all are final, one of them ends other than
    Completed, or ``timeout_s`` passes (those still running are then missing). The Prefect API being
    away (a server restart) is waited out for up to ``api_grace_s`` — the stages run on meanwhile."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    away_since = None
    final: dict[UUID, State] = {}
    with get_client(sync_client=True) as client:
        while True:
            for flow_run_id in [i for i in flow_run_ids if i not in final]:
                try:
                    state = client.read_flow_run(flow_run_id).state
                    away_since = None
                except Exception as exc:  # noqa: BLE001 - httpx and Prefect's own errors alike
                    away_since = away_since or time.monotonic()
                    if time.monotonic() - away_since > api_grace_s:
                        raise StageCrashed(f"lost the Prefect API for {api_grace_s:.0f} s while waiting for "
                                           f"flow run {flow_run_id}: {exc}") from exc
                    get_run_logger().warning("cannot read flow run %s (%s); still waiting", flow_run_id, exc)
                    break
                if state is not None and (state.is_final() or state.type == StateType.CANCELLING):
                    final[flow_run_id] = state
                    if state.type != StateType.COMPLETED:
                        return final
            if len(final) == len(flow_run_ids):
                return final
            if deadline is not None and time.monotonic() >= deadline:
                return final
            time.sleep(POLL_S)


def cancel(flow_run_id: UUID, why: str) -> None:
    """Ask the server to cancel a stage's flow run, as ``prefect flow-run cancel`` does: it cancels
    one that has not started at once, and sets a running one Cancelling, which its worker then
    stops. Best effort: the API may be away too."""
    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, State(type=StateType.CANCELLING, message=f"cancelled: {why}"))
    except Exception as exc:  # noqa: BLE001 - we are already failing; say so and go on
        get_run_logger().warning("could not cancel flow run %s (%s): %s", flow_run_id, why, exc)
