"""The inbox: a scheduled deployment picks up submissions; broken ones land in failed/ with a reason."""

from __future__ import annotations

import json
import shutil
import time
from datetime import timedelta

import pytest



INBOX_TIMEOUT = 600
SETTINGS = dict(height=96, width=64, steps=2, window=4, overlap=1, stride=2, decode_chunk_size=4,
                segment_length=8, segment_overlap=2)


def submit(inbox, name, reference, driving, **settings):
    folder = inbox / "incoming" / name
    folder.mkdir(parents=True)
    shutil.copy(reference, folder / "character.png")
    shutil.copy(driving, folder / "motion.mp4")
    (folder / "job.json").write_text(json.dumps(dict(reference="character.png", driving="motion.mp4", **settings)))


def completed_runs(deployment_id) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type={"any_": ["COMPLETED", "FAILED", "CRASHED"]})),
        )


@pytest.fixture
def scheduled_inbox(prefect_server, tiny_model, tmp_path):
    """An inbox deployment on the cpu pool, scheduled every 10 s, and a cpu worker to run it."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    from flows.cli import create_pools_and_queues
    from flows.localcluster import PROJECT_DIR

    inbox, store = tmp_path / "inbox", tmp_path / "store"
    create_pools_and_queues()
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("inbox")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=f"test-{tmp_path.name}", entrypoint="flows.inbox:inbox", work_pool_name="cpu",
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}],
            parameters=dict(inbox_url=str(inbox), store=str(store), model=str(tiny_model), dispatch="local"),
            schedules=[DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(seconds=10)))],
            concurrency_limit=1, paused=True,
        )
    worker = f"inbox-worker-{tmp_path.name}"
    prefect_server.start_worker("cpu", worker)
    yield inbox, deployment_id
    with get_client(sync_client=True) as client:
        client.pause_deployment(deployment_id)
    prefect_server.kill_worker(worker)


def test_scheduled_inbox_renders_and_sorts_submissions(prefect_server, scheduled_inbox, clip_inputs, tmp_path):
    from prefect import get_client

    inbox, deployment_id = scheduled_inbox
    reference, driving = clip_inputs
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    submit(inbox, "shot-010", reference, driving, **SETTINGS)
    submit(inbox, "shot-020", reference, driving, seed=3, **SETTINGS)
    submit(inbox, "shot-030", reference, broken, **SETTINGS)
    with get_client(sync_client=True) as client:
        client.resume_deployment(deployment_id)

    deadline = time.monotonic() + INBOX_TIMEOUT
    while not completed_runs(deployment_id) and time.monotonic() < deadline:
        time.sleep(2)
    first = completed_runs(deployment_id)
    assert first and first[0].state.is_completed(), prefect_server.log_tail()

    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["shot-010", "shot-020"]
    for name in ("shot-010", "shot-020"):
        assert (inbox / "done" / name / "output.mp4").stat().st_size > 0
        assert json.loads((inbox / "done" / name / "result.json").read_text())["audio_seconds"] > 0
    assert [p.name for p in (inbox / "failed").iterdir()] == ["shot-030"]
    reason = (inbox / "failed" / "shot-030" / "reason.txt").read_text()
    assert "motion.mp4" in reason and "video" in reason, reason
    assert not any((inbox / "incoming").iterdir()) and not any((inbox / "processing").iterdir())

    # the schedule runs again: nothing is lost or processed twice
    before = {p: p.stat().st_mtime for p in inbox.rglob("*") if p.is_file()}
    while len(completed_runs(deployment_id)) < 2 and time.monotonic() < deadline:
        time.sleep(2)
    runs = completed_runs(deployment_id)
    assert len(runs) >= 2
    assert {p: p.stat().st_mtime for p in inbox.rglob("*") if p.is_file()} == before
