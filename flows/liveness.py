"""Lost segment runs, detected by Prefect itself: flow-run heartbeats and a proactive automation.

Segment runs send a heartbeat event every `HEARTBEAT_SECONDS` (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`,
set for the `render-segment/gpu` deployment in `prefect.yaml`). The automation below, created by
`setup-cluster`, marks a segment run Crashed when, after it was claimed by a worker (Pending),
started (Running) or last beat, no further sign of life or final state arrives within
`lost_after` seconds. That covers a machine lost mid-segment and one lost while its run's process
was starting (claimed, importing: Prefect issue #18933), which heartbeats alone would not. The
job's dispatcher (`flows.dispatch`) then resubmits the run's unfinished segments.
"""

from __future__ import annotations

from datetime import timedelta

# Seconds between two heartbeats of a segment run (Prefect's minimum).
HEARTBEAT_SECONDS = 30
# A segment run silent for this long is lost: Prefect advises at least three heartbeats.
DEFAULT_LOST_AFTER_SECONDS = 150
MIN_LOST_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
AUTOMATION_NAME = "controlnext-video: lost segment runs"
SEGMENT_DEPLOYMENT = "render-segment/gpu"

_SIGNS_OF_LIFE = ("prefect.flow-run.Pending", "prefect.flow-run.Running", "prefect.flow-run.heartbeat")
_FINAL = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Crashed",
          "prefect.flow-run.Cancelled", "prefect.flow-run.Cancelling")


def lost_run_automation(deployment_id: str, lost_after: float):
    """The automation that marks a silent run of the deployment Crashed."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    if lost_after < MIN_LOST_AFTER_SECONDS:
        raise ValueError(f"lost_after must be at least {MIN_LOST_AFTER_SECONDS} s (three heartbeats), got {lost_after}")
    return Automation(
        name=AUTOMATION_NAME,
        description=f"Marks a {SEGMENT_DEPLOYMENT} run Crashed when it shows no sign of life for {lost_after:.0f} s; "
                    "the job resubmits its unfinished segments.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
            after=set(_SIGNS_OF_LIFE),
            expect=set(_SIGNS_OF_LIFE + _FINAL),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=lost_after),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {lost_after:.0f} s (claimed or running): worker lost",
        )],
    )


def ensure_lost_run_automation(lost_after: float = DEFAULT_LOST_AFTER_SECONDS,
                               deployment: str = SEGMENT_DEPLOYMENT) -> str:
    """Create (or replace) the automation for the segment deployment; returns its id."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        deployment_id = str(client.read_deployment_by_name(deployment).id)
        for existing in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(existing.id)
    return str(lost_run_automation(deployment_id, lost_after).create().id)
