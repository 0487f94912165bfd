"""A stage as a flow run of its deployment on another work pool (``launch.kind: deployment``),
e.g. a GPU pool with one worker per GPU host.

Both sides compute the stage's cache key; the child is told the key and code version the
pipeline expects and refuses at once when its own differ (another r1flow on the GPU pool), so a
mismatch is not found only after hours of training. The output is found in the shared store
under that key. The child run belongs to the pipeline: when ``launch.timeout_s`` passes, or the
pipeline is cancelled or killed, the child is cancelled too; a child cancelled by a person is a
decision, not a crash, and is not retried.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType

from r1flow.cache import code_version
from r1flow.launcher import StageCrashed, StageInputError
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
    """Run ``stage`` as a flow run of ``launch.deployment`` and return what it published."""
    from prefect.deployments import run_deployment

    store = runtime.store()
    output_key = runtime.output_key(stage, key)
    if not fresh and (ref := published(stage, store, output_key)):
        return ref
    name = launch["deployment"].format(stage=stage)
    parameters = {**flow_parameters, "expected": {"key": key, "code": code_version()}}
    flow_run = run_deployment(name, parameters=parameters, job_variables=launch.get("job_variables") or None,
                              timeout=0, as_subflow=True)
    where = f"stage {stage} on deployment {name} (flow run {flow_run.id})"
    get_run_logger().info("%s: started", where)
    timeout_s = launch.get("timeout_s")
    try:
        state = wait_for(flow_run.id, timeout_s)
    except BaseException:  # the pipeline is cancelled or killed (or lost its API): the stage must not go on
        cancel(flow_run.id, "the pipeline that launched it stopped")
        raise
    if state is None:
        cancel(flow_run.id, f"launch.timeout_s={timeout_s} passed")
        raise StageTimedOut(f"{where} did not finish within launch.timeout_s={timeout_s} s and was cancelled; "
                            "`r1flow resume` continues it from its newest checkpoint")
    if state.type in (StateType.CANCELLED, StateType.CANCELLING):
        raise StageCancelled(f"{where} was cancelled ({state.message or 'by a user'}); not retried")
    if state.type != StateType.COMPLETED:
        message = state.message or state.name
        if any(kind in message for kind in REFUSALS):
            raise StageInputError(f"{where} failed: {message}")
        raise StageCrashed(f"{where} ended {state.name}: {message}")
    if not store.verify(output_key):
        raise StageCrashed(f"{where} completed but published nothing at {store.resolve(output_key)}: "
                           "do both pools share the store?")
    return store.ref(output_key)


def wait_for(flow_run_id: UUID, timeout_s: float | None, api_grace_s: float = API_GRACE_S) -> State | None:
    """The flow run's final state, or None when ``timeout_s`` passes first. The Prefect API being
    away (a server restart) is waited out for up to ``api_grace_s`` — the stage runs on meanwhile."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    away_since = None
    with get_client(sync_client=True) as client:
        while True:
            try:
                state = client.read_flow_run(flow_run_id).state
                away_since = None
            except Exception as exc:  # noqa: BLE001 - httpx and Prefect's own errors alike
                away_since = away_since or time.monotonic()
                if time.monotonic() - away_since > api_grace_s:
                    raise StageCrashed(f"lost the Prefect API for {api_grace_s:.0f} s while waiting for "
                                       f"flow run {flow_run_id}: {exc}") from exc
                get_run_logger().warning("cannot read flow run %s (%s); still waiting", flow_run_id, exc)
                state = None
            if state is not None and (state.is_final() or state.type == StateType.CANCELLING):
                return state
            if deadline is not None and time.monotonic() >= deadline:
                return None
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
