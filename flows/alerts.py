"""Failure notices: Prefect automations that flag a failed or stuck pipeline run (``r1flow alerts``).

Two automations on the Prefect server, both sending to one webhook notification block (Slack, a
chat bridge, a pager — anything that takes a POST):

- **failed**: a flow run of the pipeline, R1-Zero or stage flow enters Failed, Crashed or TimedOut
  (reactive);
- **stuck**: such a flow run started Running and has not reached a final state within
  ``stuck_after_s`` (proactive: it fires on the *absence* of the final event). Unless given, it is
  derived from the pipeline's estimate (``stuck_after``): a fixed 12 h flags a healthy 7B run,
  whose stages alone are estimated at more than that.

The server evaluates them (its triggers and actions services), so they work whichever worker ran
the flow and even when that worker died.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from r1flow.config import STAGES, PipelineConfig
from r1flow.estimate import stage_hours
from r1flow.launcher import timeout_for

FLOWS = ["r1-pipeline", "r1-zero", "r1-stage"]
FINAL = {"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Crashed",
         "prefect.flow-run.Cancelled", "prefect.flow-run.TimedOut"}
DEFAULT_STUCK_AFTER_S = 12 * 3600.0  # without an estimate
BODY = ("r1flow flow run {{ flow_run.name }} ({{ flow.name }}) is {{ flow_run.state.name }}: "
        "{{ flow_run.state.message }} — {{ flow_run|ui_url }}")


def _flows_only() -> dict:
    return {"prefect.resource.role": "flow", "prefect.resource.name": FLOWS}


def stuck_after(config: PipelineConfig | None, explicit_s: float | None = None) -> float:
    """Seconds after which a run counts as stuck: ``explicit_s`` when given; else the whole
    pipeline's estimate — every stage on its own GPUs, one after another (an upper bound: some run
    side by side) — with ``timeout_for``'s margin; 12 h without a config or when a model's size is
    unknown. One automation watches every run: install it for the longest preset the team runs."""
    if explicit_s is not None:
        return explicit_s
    hours = [stage_hours(config, stage) for stage in STAGES] if config is not None else [None]
    if any(h is None for h in hours):
        return DEFAULT_STUCK_AFTER_S
    return timeout_for(sum(hours), DEFAULT_STUCK_AFTER_S)


def install(webhook_url: str, *, stuck_after_s: float | None = None, config: PipelineConfig | None = None,
            block_name: str = "r1flow-alerts", allow_private_urls: bool = False) -> list[str]:
    """Create or replace the notification block and the two automations; returns their names
    (``stuck_after_s``: as given, else derived from ``config``'s estimate — ``stuck_after``)."""
    stuck_after_s = stuck_after(config, stuck_after_s)
    block = CustomWebhookNotificationBlock(  # the URL is the secret (a Slack webhook is): kept as one
        name=block_name, url="{{webhook_url}}", secrets={"webhook_url": webhook_url},
        allow_private_urls=allow_private_urls, json_data={"text": "{{subject}}: {{body}}"})
    block_id = block.save(block_name, overwrite=True)
    failed = Automation(
        name="r1flow: run failed",
        description="A pipeline, R1-Zero or stage flow run failed or crashed.",
        trigger=EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed",
                                     "prefect.flow-run.TimedOut"},
                             match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=_flows_only(),
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[SendNotification(block_document_id=block_id, subject="r1flow run failed", body=BODY)])
    stuck = Automation(
        name="r1flow: run stuck",
        description=f"A pipeline, R1-Zero or stage flow run has run for {stuck_after_s:.0f} s without finishing.",
        trigger=EventTrigger(after={"prefect.flow-run.Running"}, expect=FINAL,
                             match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=_flows_only(),
                             for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                             within=timedelta(seconds=stuck_after_s)),
        actions=[SendNotification(block_document_id=block_id, subject="r1flow run stuck", body=BODY)])
    for automation in (failed, stuck):
        _delete_named(automation.name)  # re-running `r1flow alerts` replaces, never duplicates
        automation.create()
    return [failed.name, stuck.name]


def _delete_named(name: str) -> None:
    while True:
        try:
            Automation.read(name=name).delete()
        except ValueError:  # none (left) with that name
            return
