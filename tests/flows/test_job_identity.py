"""Job identity, early checks and the job-folder hygiene of the render stages (plain functions, no
Prefect server)."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from .conftest import small_request


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def other_reference(clip_inputs, tmp_path):
    from PIL import Image

    reference, _ = clip_inputs
    path = tmp_path / "other-reference.png"
    Image.open(reference).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
    return path


def test_reused_job_id_with_other_content_is_refused_before_anything_is_written(
        tiny_model, clip_inputs, other_reference, tmp_path):
    from flows import stages
    from storage.identity import JobConflictError

    reference, driving = clip_inputs
    store = tmp_path / "store"
    first = small_request(reference, driving, tiny_model, store, job_id="dup")
    assert stages.ingest(first).job_id == "dup"
    before = snapshot(store)

    for change in (dict(reference=str(other_reference)), dict(seed=3), dict(steps=3)):
        second = first.model_copy(update=change)
        with pytest.raises(JobConflictError, match="job id 'dup' already names a different job") as err:
            stages.ingest(second)
        if "seed" in change:
            assert "seed: 7 there, 3 here" in str(err.value)
        if "reference" in change:
            assert "reference_sha256" in str(err.value)
        assert snapshot(store) == before  # request.json, inputs and identity untouched

    # the same content resumes the same job; settings that do not change pixels are the same job too
    assert stages.ingest(first.model_copy(update=dict(max_in_flight=2, output="elsewhere.mp4"))).job_id == "dup"


def test_derived_job_id_follows_inputs_settings_and_model_files(tiny_model, clip_inputs, other_reference, tmp_path):
    from flows import stages

    reference, driving = clip_inputs
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    request = small_request(reference, driving, model, tmp_path / "store")
    first = stages.ingest(request).job_id
    assert first.startswith("job-") and stages.ingest(request).job_id == first
    assert stages.ingest(request.model_copy(update=dict(reference=str(other_reference)))).job_id != first
    assert stages.ingest(request.model_copy(update=dict(seed=8))).job_id != first
    # new weights in the same directory (a fine-tune copied over) make a new job, never the old frames
    weights = model / "controlnext.safetensors"
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert stages.ingest(request).job_id != first


def test_job_folder_from_before_identities_is_not_taken_over(tiny_model, clip_inputs, tmp_path):
    from flows import stages
    from storage.identity import JobConflictError

    reference, driving = clip_inputs
    legacy = tmp_path / "store" / "jobs" / "shot-1"
    legacy.mkdir(parents=True)
    (legacy / "request.json").write_text("{}")
    with pytest.raises(JobConflictError, match="made before job identities were recorded"):
        stages.ingest(small_request(reference, driving, tiny_model, tmp_path / "store", job_id="shot-1"))
    assert [p.name for p in legacy.iterdir()] == ["request.json"]


def test_model_is_checked_before_any_input_or_pose_work(tiny_model, clip_inputs, tmp_path):
    from flows import stages

    reference, driving = clip_inputs
    store = tmp_path / "store"
    with pytest.raises(stages.JobInputError, match=f"model: model directory not found: {tmp_path / 'nope'}"):
        stages.ingest(small_request(reference, driving, tmp_path / "nope", store))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    data = (broken / "controlnext-unet.safetensors").read_bytes()
    (broken / "controlnext-unet.safetensors").write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(stages.JobInputError, match="controlnext-unet.safetensors is truncated"):
        stages.ingest(small_request(reference, driving, broken, store))
    assert not store.exists()  # nothing was copied, probed into the store, or detected


def test_frames_without_a_pose_are_returned_logged_and_reported(tiny_model, tmp_path):
    """A clip whose second half shows nobody: `render` names those frames (the log and the report)."""
    from flows import stages
    from flows.demo import driving_frames, make_demo_inputs
    from flows.report import report_markdown

    from controlnext_video.video import VideoWriter

    reference, _ = make_demo_inputs(tmp_path / "inputs", seconds=0.5, audio=False)
    clip = tmp_path / "half-empty.mp4"
    frames = list(driving_frames(seconds=1.0))
    with VideoWriter(clip, 24, codec="h264") as writer:
        for i, frame in enumerate(frames):
            writer.write(frame if i < 12 else np.full_like(frame, 128))
    request = small_request(reference, clip, tiny_model, tmp_path / "store")
    ingest = stages.ingest(request)
    job = stages.JobContext.open(request.store, ingest.job_id)
    detections = stages.detect_poses(job, ingest, lambda done, total: None)
    count, missing = stages.align(job, detections)
    assert count == 12 and set(range(6, 12)) <= set(missing)  # the frames that show nobody
    summary = dict(job_id=ingest.job_id, ingest=dict(ingest.__dict__), timings={}, attempts={}, segments=[],
                   missing_pose_frames=missing,
                   encoded=dict(output_key="x", side_by_side="y", frames=12, fps="12", duration=1.0,
                                audio_seconds=None), pose_preview="z")
    text = report_markdown(job, summary, {}, "contact-sheet.jpg")
    assert f"{len(missing)} of 12 output frames have no pose" in text
    assert ", ".join(map(str, missing)) in text


def test_temporaries_of_killed_writes_are_swept_when_old(tmp_path):
    from storage import ArtifactStore

    store = ArtifactStore(tmp_path / "store")
    store.write_bytes("jobs/a/segments/0000/frames/frame_000000.png", b"png")
    folder = tmp_path / "store" / "jobs" / "a" / "segments" / "0000" / "frames"
    old = folder / ".frame_000001.png.0123456789ab.partial"
    fresh = folder / ".frame_000002.png.0123456789ab.partial"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert store.list("jobs/a") == ["jobs/a/segments/0000/frames/frame_000000.png"]  # never listed
    assert store.remove_temporaries("jobs/a", older_than=300) == 1
    assert not old.exists() and fresh.exists()  # a live writer's file is left alone


def test_corrupt_reference_is_named_and_damaged_clip_is_noted(tiny_model, clip_inputs, tmp_path):
    """`render` names a corrupt PNG (it used to raise a raw SyntaxError), and a faststart MP4 cut in
    half keeps its rate (24 fps, stride 2: 12 fps) with a warning in the job's notes."""
    from flows import stages
    from flows.demo import driving_frames

    from controlnext_video.video import VideoWriter, iter_frames

    reference, driving = clip_inputs
    corrupt = tmp_path / "corrupt.png"
    data = bytearray(reference.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the pixel data: the checksum no longer matches
    corrupt.write_bytes(bytes(data))
    with pytest.raises(stages.JobInputError, match=f"reference image {corrupt}"):
        stages.ingest(small_request(corrupt, driving, tiny_model, tmp_path / "store"))
    assert not (tmp_path / "store").exists()

    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    with VideoWriter(whole, 24, codec="h264") as writer:
        for frame in driving_frames(seconds=2.0):
            writer.write(frame)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = stages.ingest(small_request(reference, cut, tiny_model, tmp_path / "store"))
    decoded = sum(1 for _ in iter_frames(cut))
    assert 0 < decoded < 48
    assert result.output_fps == "12" and result.num_frames == -(-decoded // 2)
    assert len(result.notes) == 1 and str(cut) in result.notes[0] and "48" in result.notes[0], result.notes


def test_conditions_are_part_of_the_identity_and_checked_early(tiny_model, clip_inputs, tmp_path):
    from flows import stages

    reference, driving = clip_inputs
    request = small_request(reference, driving, tiny_model, tmp_path / "store")
    assert request.conditions == ["pose"] and "conditions" not in request.pixel_settings()  # ids of old jobs kept
    edges = request.model_copy(update=dict(conditions=["edges"]))
    assert edges.pixel_settings()["conditions"] == ["edges"]
    assert stages.ingest(edges).job_id != stages.ingest(request).job_id
    with pytest.raises(stages.JobInputError, match="takes one condition"):
        stages.ingest(request.model_copy(update=dict(conditions=["pose", "mask"])))


def test_frame_conditions_are_extracted_cached_and_rendered_as_control_frames(tiny_model, clip_inputs, tmp_path,
                                                                              monkeypatch):
    """Edges of the driving frames, the reference's first, become the control frames of a
    segment; a second job on the clip reads them from the cache."""
    from flows import stages
    from storage.layout import CACHE_PREFIX

    reference, driving = clip_inputs
    request = small_request(reference, driving, tiny_model, tmp_path / "store", conditions=["edges"])
    ingested = stages.ingest(request)
    job = stages.JobContext.open(request.store, ingested.job_id)
    num_frames, _ = stages.align(job, stages.detect_poses(job, ingested, lambda done, total: None))
    previews = stages.extract_conditions(job, ingested, num_frames)
    assert list(previews) == ["edges"] and job.store.exists(previews["edges"])
    frames = stages.condition_frames(job, range(2, 5))
    assert len(frames) == 4 and frames[0].shape == (request.height, request.width, 3)
    assert all(set(np.unique(f)) <= {0, 255} and (f[..., 0] == f[..., 2]).all() for f in frames)
    assert any(f.any() for f in frames)
    cached = sorted((tmp_path / "store" / CACHE_PREFIX / "conditions").rglob("index.json"))
    assert len(cached) == 1
    import dataclasses

    import pose.conditions

    from storage.chunks import ChunkedFrames

    extracted = []
    edges = pose.conditions.FRAME_CONDITION_TYPES["edges"]

    def counting_extractor(settings):
        extractor = edges.extractor(settings)
        extractor.function = lambda frame, inner=extractor.function: extracted.append(1) or inner(frame)
        return extractor

    counting = dataclasses.replace(edges, extractor=counting_extractor)
    monkeypatch.setitem(pose.conditions.FRAME_CONDITION_TYPES, "edges", counting)
    seeded = stages.ingest(request.model_copy(update=dict(seed=1)))  # another job, same clip: from the cache
    other = stages.JobContext.open(request.store, seeded.job_id)
    stages.detect_poses(other, seeded, lambda done, total: None)
    assert list(stages.extract_conditions(other, seeded, num_frames)) == ["edges"]
    assert len(extracted) == 1  # the reference image's map only: the clip's came from the cache
    first, second = (ChunkedFrames(j.store, j.layout.condition_maps("edges")) for j in (job, other))
    assert len(first) == num_frames + 1 and np.array_equal(np.stack(list(first)), np.stack(list(second)))


def test_several_conditions_stack_for_a_multi_condition_model(clip_inputs, tmp_path):
    """A multi-condition model takes the request's conditions stacked in its own order, black for
    the ones left out."""
    from controlnext_video.factory import save_tiny_model
    from flows import stages

    reference, driving = clip_inputs
    model = save_tiny_model(tmp_path / "multi", seed=0, control_type="controlnext-multi")
    request = small_request(reference, driving, model, tmp_path / "store", conditions=["edges", "pose"])
    ingested = stages.ingest(request)  # accepted: the model takes pose, edges and mask
    job = stages.JobContext.open(request.store, ingested.job_id)
    num_frames, _ = stages.align(job, stages.detect_poses(job, ingested, lambda done, total: None))
    stages.extract_conditions(job, ingested, num_frames)
    frames = stages.condition_frames(job, range(0, 3), ("pose", "edges", "mask"))
    assert len(frames) == 4 and frames[0].shape == (request.height, request.width, 9)
    pose_part, edges_part, mask_part = (np.stack(frames)[..., 3 * k : 3 * k + 3] for k in range(3))
    assert pose_part.any() and edges_part.any() and not mask_part.any()
    with pytest.raises(stages.JobInputError, match="not among"):
        stages.condition_frames(job, range(0, 3), ("pose", "mask"))
