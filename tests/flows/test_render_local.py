"""The render flow end to end, in-process, on a real Prefect server, with the tiny model."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest

from .conftest import small_request


def test_output_has_exact_rate_length_and_audio(local_job):
    from controlnext_video.video import probe

    request, result, out = local_job
    info = probe(out / "result.mp4")
    assert info.fps == Fraction(30000, 1001) / 2  # exact source rate / stride, not a rounded integer
    source = probe(request.driving)
    assert info.frame_count == result["ingest"]["num_frames"] == -(-source.frame_count // 2)
    assert abs(info.duration - source.duration) <= 2 / float(info.fps)
    assert info.has_audio and abs(info.audio[0].duration - info.duration) < 0.05


def test_job_layout_report_and_previews(local_job):
    from storage import ArtifactStore, JobLayout

    request, result, _ = local_job
    store, layout = ArtifactStore(request.store), JobLayout(result["job_id"])
    assert len(result["segments"]) >= 4
    for index, start, stop in result["segments"]:
        record = store.read_json(layout.segment_record(index))
        assert [f["frame"] for f in record["frames"]] == list(range(start, stop))
    report = store.read_text(result["report"])
    assert "## Segments" in report and "## Timings" in report and result["job_id"] in report
    for key in (result["encoded"]["side_by_side"], result["pose_preview"], layout.request, layout.identity):
        assert store.exists(key), key
    from storage import read_status

    assert read_status(store, result["job_id"]).state == "succeeded"


def test_artifacts_in_prefect(local_job):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    _, result, _ = local_job
    job = result["job_id"].lower()

    def artifacts(key):  # this run's: another test may render the same inputs (the same job id) in the session
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[result["flow_run_id"]])))

    with get_client(sync_client=True) as client:
        report = artifacts(f"{job}-report")
        assert report and "## Segments" in report[-1].data
        assert "![Output frames beside their poses](data:image/jpeg;base64," in report[-1].data
        (progress,) = artifacts(f"{job}-progress")  # the job's one progress bar
        assert progress.type == "progress" and progress.data == 100.0 and progress.description.startswith("done")
        run_artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[result["flow_run_id"]])))
        assert {a.key for a in run_artifacts} == {f"{job}-progress", f"{job}-report"}  # no links: a local store


def test_one_progress_bar_moves_with_denoising_steps(local_job, local_job_progress):
    request, result, _ = local_job
    updates = [(fraction, text) for key, fraction, text in local_job_progress]
    assert {key for key, _, _ in local_job_progress} == {result["job_id"].lower() + "-progress"}
    rendering = [fraction for fraction, text in updates if text.startswith("rendering:")]
    total = len(result["segments"]) * request.steps
    assert f"rendering: {total}/{total} denoising steps" in updates[-1][1] or any(
        f"{total}/{total} denoising steps" in text for _, text in updates)
    assert rendering == sorted(rendering) and len(set(rendering)) > len(result["segments"])  # moves within segments
    assert [text for _, text in updates if text in ("poses", "blend", "encode", "report")] == [
        "poses", "blend", "encode", "report"]


def test_job_log_names_stages_and_ends_with_the_output(local_job, prefect_server):
    import logging

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    request, result, out = local_job
    for handler in logging.getLogger("prefect").handlers:
        if isinstance(handler, APILogHandler):
            handler.flush()
    closing = f"job {result['job_id']} done: the output is at {out / 'result.mp4'}"
    deadline = time.monotonic() + 120  # the log worker sends in batches: wait for the last line to land
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(result["flow_run_id"])
        while True:
            logs, page = [], True
            while page:  # the API answers at most 200 logs a call
                page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                                        limit=200, offset=len(logs))
                logs += [log.message for log in page]
            if closing in logs or time.monotonic() > deadline:
                break
            time.sleep(1)
    for stage in ("ingest", "poses", "align", "plan", "render", "blend", "encode", "report"):
        assert f"stage {stage}: started" in logs and any(m.startswith(f"stage {stage}: finished in") for m in logs)
    ours = [m for m in logs if not m.startswith("Finished in state")]
    assert ours[-1] == closing
    assert run.name == f"render-driving-{result['job_id']}-run-1" and f"job:{result['job_id']}" in run.tags


def test_rerun_renders_nothing_again(local_job, prefect_server):
    from flows.render import render

    request, first, out = local_job
    job_folder = out / "store" / "jobs" / first["job_id"]
    outputs = [out / "result.mp4", *sorted((job_folder / "output").rglob("*.*"))]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs}
    again = render(request)
    assert again["job_id"] == first["job_id"]
    assert again["attempts"] == {}  # every segment record exists: no segment rendered twice
    assert again["encoded"]["output_key"] == first["encoded"]["output_key"]
    changed = [p for p in outputs if p.name != "report.md" and (p.stat().st_mtime_ns, p.read_bytes()) != before[p]]
    assert not changed  # blended frames, video, preview and the delivered copy: untouched


def test_same_request_same_frames_whatever_the_segmentation(local_job, tiny_model, clip_inputs, tmp_path):
    """Noise depends on (seed, frame): the first segment's frames match a render with longer segments."""
    from flows.render import render
    from storage import ArtifactStore, JobLayout

    from controlnext_video.video import decode_png

    request, first, _ = local_job
    reference, driving = clip_inputs
    other = small_request(reference, driving, tiny_model, tmp_path / "store", segment_length=40, segment_overlap=2)
    result = render(other)
    assert len(result["segments"]) == 1
    a, b = ArtifactStore(request.store), ArtifactStore(other.store)
    seg0 = first["segments"][0]
    for frame in range(seg0[1], seg0[2]):
        x = decode_png(a.read_bytes(JobLayout(first["job_id"]).segment_frame(0, frame)))
        y = decode_png(b.read_bytes(JobLayout(result["job_id"]).segment_frame(0, frame)))
        # the same frame, denoised with the same noise, in a different set of windows
        assert np.abs(x.astype(int) - y.astype(int)).mean() < 20


@pytest.mark.heavy
def test_a_render_driven_by_edges(prefect_server, tiny_model, clip_inputs, tmp_path):
    """conditions=["edges"]: the flow extracts the clip's edges, previews them, links the preview in
    the report and renders the segments with them (the workers read the request's list)."""
    from flows.render import render

    reference, driving = clip_inputs
    request = small_request(reference, driving, tiny_model, tmp_path / "store", conditions=["edges"], max_frames=8)
    summary = render(request)
    assert summary["encoded"]["frames"] == 8
    preview = summary["condition_previews"]["edges"]
    assert (tmp_path / "store" / preview).stat().st_size > 0
    assert "edges preview" in (tmp_path / "store" / summary["report"]).read_text()


@pytest.mark.heavy
def test_a_multi_condition_model_renders_pose_and_edges(prefect_server, clip_inputs, tmp_path):
    """A multi-condition model directory renders a request with two conditions through the flow."""
    from controlnext_video.factory import save_tiny_model
    from flows.render import render

    reference, driving = clip_inputs
    model = save_tiny_model(tmp_path / "multi", seed=0, control_type="controlnext-multi")
    request = small_request(reference, driving, model, tmp_path / "store", conditions=["pose", "edges"], max_frames=8)
    summary = render(request)
    assert summary["encoded"]["frames"] == 8 and list(summary["condition_previews"]) == ["edges"]
