"""The inbox: the watcher starts a deployment run when submissions arrive (none for an empty inbox);
broken submissions land in failed/ with a reason."""

from __future__ import annotations

import json
import re
import shutil
import time

import numpy as np
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


def inbox_runs(deployment_id) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def inbox_deployment(tmp_path, **parameters) -> tuple[str, str]:
    """An inbox deployment on the cpu pool for a test's own inbox (as prefect.yaml's, no schedule):
    its id and name."""
    from prefect import get_client

    from flows.cli import create_pools_and_queues
    from flows.localcluster import PROJECT_DIR

    create_pools_and_queues()
    name = f"test-{tmp_path.name}"
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(
            flow_id=client.create_flow_from_name("inbox"), name=name, entrypoint="flows.inbox:inbox",
            work_pool_name="cpu", concurrency_limit=1, parameters=dict(inbox_url=str(tmp_path / "inbox"), **parameters),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}],
        )
    return deployment_id, f"inbox/{name}"


def test_watcher_starts_one_run_per_set_of_waiting_submissions(prefect_server, clip_inputs, tmp_path):
    """No run for an empty inbox; one for what waits, however often it looks; a new one when more arrive."""
    from flows.inbox import start_inbox_run
    from storage.inbox import Inbox

    reference, driving = clip_inputs
    deployment_id, deployment = inbox_deployment(tmp_path)  # no worker: its runs wait
    box = Inbox(tmp_path / "inbox")
    assert start_inbox_run(box, deployment) is None and not inbox_runs(deployment_id)
    (tmp_path / "inbox" / "incoming" / "half-uploaded").mkdir(parents=True)  # no job.json yet
    assert start_inbox_run(box, deployment) is None
    submit(tmp_path / "inbox", "shot-010", reference, driving)
    first = start_inbox_run(box, deployment)
    assert first and start_inbox_run(box, deployment) == first
    submit(tmp_path / "inbox", "shot-020", reference, driving)
    second = start_inbox_run(box, deployment)
    assert second not in (None, first)
    assert sorted(r.name for r in inbox_runs(deployment_id)) == ["inbox: shot-010", "inbox: shot-010, shot-020"]


@pytest.mark.e2e
def test_watched_inbox_renders_and_sorts_submissions_and_stays_quiet(prefect_server, tiny_model, clip_inputs,
                                                                    tmp_path):
    inbox = tmp_path / "inbox"
    deployment_id, deployment = inbox_deployment(tmp_path, store=str(tmp_path / "store"), model=str(tiny_model),
                                                 dispatch="local")
    reference, driving = clip_inputs
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    submit(inbox, "shot-010", reference, driving, **SETTINGS)
    submit(inbox, "shot-020", reference, driving, seed=3, **SETTINGS)
    submit(inbox, "shot-030", reference, broken, **SETTINGS)
    worker, watcher = f"inbox-worker-{tmp_path.name}", f"inbox-watcher-{tmp_path.name}"
    prefect_server.start_worker("cpu", worker)
    prefect_server.start_command(watcher, ["watch-inbox", "--every", "2", "--deployment", deployment])
    try:
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

        time.sleep(10)  # five more looks at an empty inbox: no run, nothing touched
        assert len(inbox_runs(deployment_id)) == 1
    finally:
        prefect_server.kill_worker(watcher)
        prefect_server.kill_worker(worker)


# --------------------------------------------------------------------------- confinement and isolation


def make_submission(inbox, name, image, clip, state="incoming", **settings):
    folder = inbox / state / name
    folder.mkdir(parents=True)
    shutil.copy(image, folder / "character.png")
    shutil.copy(clip, folder / "motion.mp4")
    job = dict(reference="character.png", driving="motion.mp4", **SETTINGS)
    job.update(settings)
    (folder / "job.json").write_text(json.dumps(job))
    return folder


@pytest.mark.parametrize("change, reason", [
    (dict(output="/tmp/stolen.mp4"), "may not set 'output'"),
    (dict(store="/tmp/other-store"), "may not set 'store'"),
    (dict(model="/tmp/other-model"), "may not set 'model'"),
    (dict(job_id="victim"), "may not set 'job_id'"),
    (dict(reference="/etc/hostname"), "must be a path relative to the submission folder"),
    (dict(reference="s3://bucket/x.png"), "must be a path relative to the submission folder"),
    (dict(reference="../other/character.png"), "leads out of the submission folder"),
    (dict(reference=3), "reference must name a file of the submission, got 3"),
    (dict(driving="missing.mp4"), "driving file 'missing.mp4' is not in the submission"),
    (dict(output_format="gif"), "output_format"),
    (dict(steps="many"), "steps"),
])
def test_submission_settings_are_confined_to_their_folder(tmp_path, clip_inputs, change, reason):
    from flows.inbox import submission_request
    from storage.inbox import Inbox, SubmissionError

    reference, driving = clip_inputs
    make_submission(tmp_path / "inbox", "Take 3 (final)", reference, driving, state="processing", **change)
    with pytest.raises(SubmissionError, match=re.escape(reason)):
        submission_request(Inbox(tmp_path / "inbox"), "Take 3 (final)", dict(store=str(tmp_path / "store")))


def test_symbolic_link_out_of_the_submission_is_refused(tmp_path, clip_inputs):
    from flows.inbox import submission_request
    from storage.inbox import Inbox, SubmissionError

    reference, driving = clip_inputs
    folder = make_submission(tmp_path / "inbox", "linked", reference, driving, state="processing")
    secret = tmp_path / "outside.png"
    shutil.copy(reference, secret)
    (folder / "character.png").unlink()
    (folder / "character.png").symlink_to(secret)
    with pytest.raises(SubmissionError, match="is a link leading out of the submission folder"):
        submission_request(Inbox(tmp_path / "inbox"), "linked", {})
    (folder / "sub").mkdir()
    shutil.copy(reference, folder / "sub" / "ref.png")
    (folder / "job.json").write_text(json.dumps(dict(reference="./sub/ref.png", driving="motion.mp4", **SETTINGS)))
    request = submission_request(Inbox(tmp_path / "inbox"), "linked", {})
    assert request.reference == str(folder / "sub" / "ref.png")


@pytest.mark.heavy
def test_bad_submissions_fail_alone_and_results_are_never_overwritten(prefect_server, tiny_model, clip_inputs,
                                                                      tmp_path):
    """Three submissions that used to block the inbox sit next to a valid one whose name has spaces;
    a second submission of that name with other inputs gets its own job and result folder."""
    from PIL import Image

    from flows.inbox import inbox

    from controlnext_video.video import iter_frames

    reference, driving = clip_inputs
    box, store = tmp_path / "inbox", tmp_path / "store"
    make_submission(box, "bad format", reference, driving, output_format="gif")
    make_submission(box, "bad type", reference, driving, reference=["x.png"])
    make_submission(box, "bad output", reference, driving, output=str(tmp_path / "victim.mp4"))
    (tmp_path / "victim.mp4").write_bytes(b"precious")
    make_submission(box, "Take 3 (final)", reference, driving, seed=1, max_frames=8)
    result = inbox(str(box), store=str(store), model=str(tiny_model))
    assert result == dict(rendered=["Take 3 (final)"], failed=["bad format", "bad output", "bad type"])
    assert sorted(p.name for p in (box / "failed").iterdir()) == ["bad format", "bad output", "bad type"]
    assert "output_format" in (box / "failed" / "bad format" / "reason.txt").read_text()
    assert (tmp_path / "victim.mp4").read_bytes() == b"precious"
    first = box / "done" / "Take 3 (final)"
    first_files = snapshot(first)
    assert (first / "output.mp4").stat().st_size > 0 and json.loads((first / "result.json").read_text())["job_id"]

    other = tmp_path / "other.png"
    Image.open(reference).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    make_submission(box, "Take 3 (final)", other, driving, seed=2, max_frames=8)
    assert inbox(str(box), store=str(store), model=str(tiny_model))["rendered"] == ["Take 3 (final)"]
    second = box / "done" / "Take 3 (final)-2"
    assert snapshot(first) == first_files  # the first result is untouched
    a, b = (json.loads((d / "result.json").read_text())["job_id"] for d in (first, second))
    assert a != b
    frames = [np.stack(list(iter_frames(d / "output.mp4"))).astype(int) for d in (first, second)]
    assert np.abs(frames[0] - frames[1]).mean() > 1  # the new inputs' pictures, not the first job's


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
