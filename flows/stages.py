"""The stages of a render job as plain functions (the Prefect tasks wrap them): glue between the
artifact store and the library, each calling one library step.

Stages pass small records and store keys, never frames: inputs, poses, segment frames and outputs
live in the artifact store under the job's folder (`storage.JobLayout`). Every stage is
restartable: what a stage has written is found and reused when a job runs again.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from controlnext_video.segments import SegmentPlan, blend_segments, plan_segments
from storage import ArtifactStore, JobLayout
from storage.transfer import InputNotFoundError, deliver, fetch, local_copy

from .request import RenderRequest
from .settings import Environment

# Cap on the preview panels' height (they are for review, not delivery).
PREVIEW_PANEL_HEIGHT = 512
# The report's contact sheet: this many output frames beside their poses, panels this tall (small:
# the report carries the picture itself).
CONTACT_SHEET_FRAMES = 8
CONTACT_SHEET_PANEL_HEIGHT = 128
# Temporaries (of killed writes) older than this are swept; no live write takes this long.
TEMPORARY_MAX_AGE_SECONDS = 900.0


class JobInputError(ValueError):
    """An input of the job is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class IngestResult:
    job_id: str
    reference_key: str
    driving_key: str
    reference_sha256: str
    driving_sha256: str
    source_fps: str
    output_fps: str
    num_frames: int
    has_audio: bool
    video: dict
    notes: list[str] = field(default_factory=list)  # warnings about the inputs, for the log and the report

    @property
    def fps(self) -> Fraction:
        return Fraction(self.output_fps)


@dataclass
class JobContext:
    store: ArtifactStore
    layout: JobLayout
    request: RenderRequest
    env: Environment = field(default_factory=Environment.read)

    @classmethod
    def open(cls, store_url: str, job_id: str) -> "JobContext":
        store, layout = ArtifactStore(store_url), JobLayout(job_id)
        return cls(store, layout, RenderRequest.from_stored(store.read_json(layout.request)))

    def local(self, key: str) -> Path:
        """A local file for a stored artifact (for decoders and encoders)."""
        return local_copy(self.store, key, self.env.scratch(self.layout.job_id, "store"))

    def scratch(self, name: str) -> Path:
        return self.env.scratch(self.layout.job_id) / name


# --------------------------------------------------------------------------- ingest and identity


def check_models(request: RenderRequest) -> dict:
    """Check the model directory and the pose detector's files before any other work; return the
    model's fingerprint. The job's worker must see the model directory the GPU workers load."""
    from pose.errors import PoseInputError

    from controlnext_video.controls import model_condition_types
    from controlnext_video.model_dir import check_model_dir
    from controlnext_video.weights import WeightsError

    try:
        fingerprint = check_model_dir(request.model).fingerprint()
        request.pose_settings().check_model_files()
        condition_types = model_condition_types(request.model)
    except (FileNotFoundError, WeightsError, ValueError) as exc:
        raise JobInputError(f"model: {exc}") from exc
    except PoseInputError as exc:
        raise JobInputError(str(exc)) from exc
    if condition_types is None and len(request.conditions) > 1:
        raise JobInputError(f"conditions {request.conditions}: the model's control module takes one condition "
                            "(several need a multi-condition module, control type controlnext-multi)")
    if condition_types is not None and not set(request.conditions) <= set(condition_types):
        raise JobInputError(f"conditions {request.conditions}: the model's multi-condition control module takes "
                            f"{list(condition_types)}")
    return dict(model=fingerprint)


def job_identity(request: RenderRequest, reference_sha256: str, driving_sha256: str, models: dict) -> dict:
    """What the job is: the inputs' hashes, the model files and every setting that changes pixels."""
    content = dict(reference_sha256=reference_sha256, driving_sha256=driving_sha256, models=models,
                   settings=request.pixel_settings())
    return dict(content, digest=_digest(content))


def claim_job_id(store: ArtifactStore, request: RenderRequest, identity: dict) -> str:
    """The job id (given, or derived from the content), bound to this content; refuses a reused id."""
    from storage.identity import JobConflictError, claim_job, read_identity

    job_id = request.job_id or "job-" + identity["digest"][:16]
    layout = JobLayout(job_id)
    if request.job_id and read_identity(store, layout) is None and store.children(layout.prefix):
        raise JobConflictError(
            f"job id {job_id!r} already names a job in {store.root_url} made before job identities were "
            "recorded: choose another job id, or leave it empty to derive one from the request's content")
    claim_job(store, layout, identity)
    return job_id


def ingest(request: RenderRequest) -> IngestResult:
    """Check the model, probe and validate the inputs, fix the job id, copy the inputs into the job.

    The same content resumes the same job; a given id that already names different content is
    refused before anything is written.
    """
    from storage.store import sha256_file

    from controlnext_video.video import output_rate

    if not request.reference or not request.driving:
        raise JobInputError("the request needs both a reference image and a driving video")
    models = check_models(request)
    scratch = Environment.read().scratch("ingest")
    try:
        reference = fetch(request.reference, scratch, "reference image")
        driving = fetch(request.driving, scratch, "driving video")
    except InputNotFoundError as exc:
        raise JobInputError(str(exc)) from exc
    info, num_frames, notes = _probe_inputs(request, reference, driving)
    ref_sha, clip_sha = sha256_file(reference), sha256_file(driving)
    store = ArtifactStore(request.store)
    layout = JobLayout(claim_job_id(store, request, job_identity(request, ref_sha, clip_sha, models)))
    keys = dict(reference_key=layout.input("reference" + (reference.suffix.lower() or ".png")),
                driving_key=layout.input("driving" + (driving.suffix.lower() or ".mp4")))
    for local, key, digest in ((reference, keys["reference_key"], ref_sha), (driving, keys["driving_key"], clip_sha)):
        if not (store.exists(key) and store.sha256(key) == digest):
            store.put_file(local, key)
    store.write_json(layout.request, request.model_copy(update={"job_id": layout.job_id}).model_dump())
    result = IngestResult(
        job_id=layout.job_id, reference_sha256=ref_sha, driving_sha256=clip_sha, source_fps=str(info.fps),
        output_fps=str(output_rate(info.fps, request.stride)), num_frames=num_frames, has_audio=info.has_audio,
        video=info.to_dict(), notes=notes, **keys,
    )
    store.write_json(layout.ingest, asdict(result))
    return result


def _probe_inputs(request: RenderRequest, reference: Path, driving: Path):
    """Decode the reference, probe the clip; return the probe, the output frame count and the
    warnings about the inputs (damaged clip, reference far below the output size)."""
    from pose.errors import PoseInputError, PoseInputWarning
    from pose.extract import prepare_reference

    from controlnext_video.video import DamagedVideoWarning, VideoError, planned_frame_count, probe

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            prepare_reference(reference, height=request.height, width=request.width)
        except PoseInputError as exc:
            raise JobInputError(f"reference image {request.reference}: {exc}") from exc
        try:
            info = probe(driving)
        except VideoError as exc:
            raise JobInputError(str(exc)) from exc
    notes = [str(w.message).replace(str(reference), request.reference).replace(str(driving), request.driving)
             for w in caught if issubclass(w.category, (PoseInputWarning, DamagedVideoWarning))]
    num_frames = planned_frame_count(info, request.stride, request.max_frames or None)
    if num_frames < 1:
        raise JobInputError(f"driving video {request.driving}: no frames to render with stride {request.stride}")
    return info, num_frames, notes


# --------------------------------------------------------------------------- poses


def detect_poses(job: JobContext, ingest_result: IngestResult, progress: Callable[[int, int], None]) -> str:
    """The reference's pose, and the clip's detections (cached under `cache/poses/` by clip content,
    sampling and detector model files, so another job on the clip skips detection); returns the
    cache key of the detections."""
    from pose import openpose_json
    from pose.pipeline import detect_driving, reference_pose
    from storage.layout import cache_key

    from controlnext_video.video import encode_png

    request, store, layout = job.request, job.store, job.layout
    settings = request.pose_settings()
    ref = reference_pose(job.local(ingest_result.reference_key), settings, height=request.height, width=request.width)
    store.write_bytes(layout.reference_image, encode_png(ref.image))
    _put_file(job, layout.reference_pose,
              lambda path: openpose_json.write_frame(ref.pose, path, request.width, request.height))
    max_frames = request.max_frames or None
    digest = settings.detection_digest(ingest_result.driving_sha256, stride=request.stride, max_frames=max_frames)
    cached = cache_key("poses", digest, "detected.json")
    if not store.exists(cached):
        detected = detect_driving(
            job.local(ingest_result.driving_key), settings, stride=request.stride, max_frames=max_frames,
            on_frame=lambda i, pose: progress(i // request.stride + 1, ingest_result.num_frames))
        _put_file(job, cached, lambda path: openpose_json.write_sequence(detected, path))
    return cached


def align(job: JobContext, detections_key: str) -> tuple[int, list[int]]:
    """Fill gaps, smooth and align the detections to the reference body (`pose.pipeline.finish_poses`,
    as the `poses` command does); returns the number of frames and the output frames without a pose."""
    from pose import openpose_json
    from pose.pipeline import finish_poses

    request, layout = job.request, job.layout
    detected = openpose_json.read_sequence(job.local(detections_key))
    reference = openpose_json.read_frame(job.local(layout.reference_pose))
    poses = finish_poses(detected, reference, request.pose_settings(), height=request.height, width=request.width)
    _put_file(job, layout.driving_poses, lambda path: openpose_json.write_sequence(poses.smoothed, path))
    _put_file(job, layout.aligned_poses, lambda path: openpose_json.write_sequence(poses.aligned, path))
    return len(poses.aligned), [int(i) for i in np.flatnonzero(poses.aligned.missing)]


def extract_conditions(job: JobContext, ingest_result: IngestResult, num_frames: int) -> dict[str, str]:
    """The request's frame conditions (edges, mask; `pose.conditions`): every sampled driving frame's
    map, fitted to the output size as the reference is (cached under `cache/conditions/` by clip
    content, settings, size and sampling), with the reference's own map first, written to the job;
    and a preview per condition. One pass over the clip per condition, a frame at a time: maps go
    to the store in chunks as they come (`storage.chunks`). Returns the preview keys by condition."""
    from pose.conditions import (
        FRAME_CONDITIONS, ConditionPreview, ConditionSettings, condition_digest, extract_frames, iter_clip_maps,
    )
    from storage.chunks import ChunkedFrames, ChunkedFramesWriter
    from storage.layout import cache_key

    from controlnext_video.video import decode_png

    request, store, layout = job.request, job.store, job.layout
    settings, max_frames = ConditionSettings(), request.max_frames or None
    driving = job.local(ingest_result.driving_key)
    previews = {}
    for name in (c for c in request.conditions if c in FRAME_CONDITIONS):
        digest = condition_digest(ingest_result.driving_sha256, name, settings, height=request.height,
                                  width=request.width, stride=request.stride, max_frames=max_frames)
        cached = cache_key("conditions", digest, name)
        from_cache = ChunkedFrames.exists(store, cached)
        cache = None if from_cache else ChunkedFramesWriter(store, cached)
        maps = iter_clip_maps(driving, name, height=request.height, width=request.width, stride=request.stride,
                              max_frames=max_frames, settings=settings,
                              maps=ChunkedFrames(store, cached) if from_cache else None)
        job_maps = ChunkedFramesWriter(store, layout.condition_maps(name))
        job_maps.append(extract_frames(iter([decode_png(store.read_bytes(layout.reference_image))]), name, settings)[0])
        target = job.scratch(f"{name}_preview.mp4")
        with ConditionPreview(target, name, ingest_result.fps) as preview:
            for frame, condition_map in maps:
                job_maps.append(condition_map)
                if cache is not None:
                    cache.append(condition_map)
                preview.write(frame, condition_map)
        if cache is not None:
            cache.close()
        if preview.frames != num_frames:
            raise JobInputError(f"{name}: {preview.frames} driving frames decoded, the poses have {num_frames}")
        job_maps.close()
        store.put_file(target, layout.condition_preview(name))
        previews[name] = layout.condition_preview(name)
    return previews


def condition_frames(job: JobContext, frames: range, condition_types: tuple[str, ...] | None = None
                     ) -> list[np.ndarray]:
    """The control frames of output frames `frames`, the reference's first.

    `condition_types` None: a single-condition module, the request's one condition, one RGB
    picture per frame. Otherwise a multi-condition module's types: their pictures stacked on the
    channel axis in that order, black for those the request leaves out.
    Shapes: each `(H, W, 3)` uint8, or `(H, W, 3 * len(condition_types))`."""
    request = job.request
    if condition_types is None:
        if len(request.conditions) != 1:
            raise JobInputError(f"conditions {request.conditions}: this model's control module takes one condition")
        return _condition_pictures(job, request.conditions[0], frames)
    missing = [c for c in request.conditions if c not in condition_types]
    if missing:
        raise JobInputError(f"conditions {missing} are not among the control module's {list(condition_types)}")
    pictures = [_condition_pictures(job, name, frames) if name in request.conditions else None
                for name in condition_types]
    black = np.zeros((request.height, request.width, 3), np.uint8)
    return [np.concatenate([black if p is None else p[i] for p in pictures], axis=2) for i in range(len(frames) + 1)]


def _condition_pictures(job: JobContext, name: str, frames) -> list[np.ndarray]:
    """One condition's pictures: the reference's, then those of `frames`. Shapes: `(H, W, 3)` uint8."""
    reference, picture = condition_renderer(job, name)
    return [reference] + [picture(i) for i in frames]


def condition_renderer(job: JobContext, name: str) -> tuple[np.ndarray, Callable[[int], np.ndarray]]:
    """A condition's picture of the reference, and a function drawing output frame i's (for the
    segments, the side-by-side preview and the contact sheet). Shapes: `(H, W, 3)` uint8."""
    from pose.conditions import FRAME_CONDITION_TYPES
    from pose.render import render_pose
    from storage.chunks import ChunkedFrames

    h, w = job.request.height, job.request.width
    if name == "pose":
        aligned = load_aligned(job)
        return render_pose(load_reference_pose(job), h, w), lambda i: render_pose(aligned[i], h, w)
    maps = ChunkedFrames(job.store, job.layout.condition_maps(name))  # a chunk at a time
    render = FRAME_CONDITION_TYPES[name].render
    return render(maps[0]), lambda i: render(maps[i + 1])


def load_aligned(job: JobContext):
    from pose import openpose_json

    return openpose_json.read_sequence(job.local(job.layout.aligned_poses))


def load_reference_pose(job: JobContext):
    from pose import openpose_json

    return openpose_json.read_frame(job.local(job.layout.reference_pose))


def write_pose_preview(job: JobContext, ingest_result: IngestResult) -> str:
    """Driving frames with their skeletons beside the aligned skeletons on the reference."""
    from pose import openpose_json
    from pose.preview import write_preview

    from controlnext_video.video import decode_png

    request, store, layout = job.request, job.store, job.layout
    target = job.scratch("pose_preview.mp4")
    write_preview(
        job.local(ingest_result.driving_key), decode_png(store.read_bytes(layout.reference_image)),
        openpose_json.read_sequence(job.local(layout.driving_poses)), load_aligned(job), target,
        stride=request.stride, max_frames=request.max_frames or None,
        panel_height=min(PREVIEW_PANEL_HEIGHT, request.height), progress=False,
    )
    store.put_file(target, layout.pose_preview)
    return layout.pose_preview


def _put_file(job: JobContext, key: str, write: Callable[[Path], object]) -> None:
    """Store a file made by a writer that needs a path (it streams, so no whole file in memory)."""
    path = job.scratch(key.rsplit("/", 1)[-1])
    write(path)
    job.store.put_file(path, key)
    path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- plan and segments

_pipelines: dict[tuple, object] = {}
_pipelines_lock = threading.Lock()


def get_pipeline(model: str, device: str, dtype: str, compile: bool = False, channels_last: bool = False):
    """The pipeline for these settings, loaded on first use and kept for the process."""
    from controlnext_video import ControlNeXtSVDPipeline
    from controlnext_video.placement import resolve_device, resolve_dtype

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (model, device, str(torch_dtype), compile, channels_last)
    with _pipelines_lock:
        if key not in _pipelines:
            pipe = ControlNeXtSVDPipeline.from_pretrained(model, torch_dtype=torch_dtype, device=device)
            if channels_last:
                pipe.enable_channels_last()
            if compile:
                pipe.compile()
            _pipelines[key] = pipe
        return _pipelines[key]


def plan(job: JobContext, num_frames: int) -> SegmentPlan:
    request = job.request
    length = request.planned_segment_length()
    segment_plan = plan_segments(num_frames, length, request.segment_overlap)
    job.store.write_json(job.layout.plan, dict(
        num_frames=num_frames, segment_length=length, segment_overlap=request.segment_overlap,
        segments=[[s.index, s.start, s.stop] for s in segment_plan.segments]))
    return segment_plan


def window_balance(job: JobContext, segment_plan: SegmentPlan, gpus: int) -> str:
    """What fusing a segment over `gpus` GPUs can gain: its windows and the speed-up cap."""
    from controlnext_video.distributed import speedup_cap
    from controlnext_video.windows import segment_windows

    request, longest = job.request, max(s.length for s in segment_plan.segments)
    windows = segment_windows(longest, request.window, request.overlap)
    return (f"segments of up to {longest} frames have {windows} windows: on {gpus} GPU(s) each, at most "
            f"{speedup_cap(windows, gpus):.2f}x one GPU's speed (W / ceil(W / G))")


def load_plan(job: JobContext) -> SegmentPlan:
    data = job.store.read_json(job.layout.plan)
    return plan_segments(data["num_frames"], data["segment_length"], data["segment_overlap"])


def segment_done(job: JobContext, index: int) -> bool:
    return job.store.exists(job.layout.segment_record(index))


def render_segment_frames(job: JobContext, index: int, pipe, *, on_step=None, process_group=None) -> list[dict]:
    """Render segment `index` and write its frames (PNG) as they are decoded; returns frame records.
    With `process_group` (one process per GPU), this rank's frames only."""
    from controlnext_video.segments import render_segment
    from controlnext_video.video import decode_png, encode_png

    request, store, layout = job.request, job.store, job.layout
    segment = load_plan(job).segments[index]
    condition_types = getattr(pipe.controlnext.config, "condition_types", None)
    poses = condition_frames(job, range(segment.start, segment.stop),
                             None if condition_types is None else tuple(condition_types))
    frames = []
    for frame_index, frame in render_segment(
        pipe, decode_png(store.read_bytes(layout.reference_image)), poses, segment, seed=request.seed,
        decode_chunk_size=request.decode_chunk_size, callback=on_step, num_inference_steps=request.steps,
        min_guidance_scale=request.guidance_min, max_guidance_scale=request.guidance_max,
        window_size=request.window, overlap=request.overlap, control_scale=request.control_scale,
        process_group=process_group, **request.sampler_settings(),
    ):
        ref = store.write_bytes(layout.segment_frame(index, frame_index), encode_png(frame))
        frames.append(dict(frame=frame_index, sha256=ref.sha256))
    return frames


def segment_record(job: JobContext, index: int, attempt: int, frames: list[dict], *, load_seconds: float,
                   render_seconds: float, **extra) -> dict:
    """A segment's record: its frames (with checksums), where, which attempt, how long."""
    return dict(segment=index, job_id=job.layout.job_id, attempt=attempt, worker=job.env.worker_id, frames=frames,
                load_seconds=round(load_seconds, 3), render_seconds=round(render_seconds, 3), finished_at=time.time(),
                **extra)


def segment_steps(job: JobContext, index: int) -> int:
    """The denoising steps segment `index` has done, as its render last wrote them (0: none yet)."""
    key = job.layout.segment_progress(index)
    return int(job.store.read_json(key)["step"]) if job.store.exists(key) else 0


def write_segment_record(job: JobContext, index: int, record: dict) -> None:
    job.store.write_json(job.layout.segment_record(index), record)


def remove_temporaries(job: JobContext, segments: list[int] | None = None) -> int:
    """Delete what killed writers left behind (hidden temporary files) in the given segments'
    folders, or the whole job's folder; only files older than `TEMPORARY_MAX_AGE_SECONDS`."""
    prefixes = [job.layout.segment(s) for s in segments] if segments is not None else [job.layout.prefix]
    return sum(job.store.remove_temporaries(p, older_than=TEMPORARY_MAX_AGE_SECONDS) for p in prefixes)


# --------------------------------------------------------------------------- blend and encode


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def blend(job: JobContext, segment_plan: SegmentPlan, progress: Callable[[int, int], None]) -> None:
    """Write the blended output frames (lossless PNG); a rerun with the same segment records
    (`output/blend.json` says which) leaves them as they are."""
    from controlnext_video.video import decode_png, encode_png

    store, layout = job.store, job.layout
    source = _digest([store.sha256(layout.segment_record(s.index)) for s in segment_plan.segments]
                     + [segment_plan.num_frames])
    if store.exists(layout.blend_record) and store.read_json(layout.blend_record).get("source") == source:
        progress(segment_plan.num_frames, segment_plan.num_frames)
        return
    frames = blend_segments(segment_plan, lambda segment, frame: decode_png(
        store.read_bytes(layout.segment_frame(segment, frame)), name=layout.segment_frame(segment, frame)))
    digests = []
    for index, image in enumerate(frames):
        digests.append(store.write_bytes(layout.output_frame(index), encode_png(image)).sha256)
        progress(index + 1, segment_plan.num_frames)
    store.write_json(layout.blend_record, dict(source=source, frames=digests))


def output_frames(job: JobContext, num_frames: int) -> Iterator[np.ndarray]:
    from controlnext_video.video import decode_png

    for frame in range(num_frames):
        key = job.layout.output_frame(frame)
        yield decode_png(job.store.read_bytes(key), name=key)


def encode(job: JobContext, ingest_result: IngestResult, num_frames: int) -> dict:
    """Encode the output at the clip's exact rate / stride with its audio, and the side-by-side
    preview; deliver the output to `request.output`. A rerun with the same blended frames and
    settings (`output/encode.json` says which) leaves the files untouched."""
    request, store, layout = job.request, job.store, job.layout
    settings = dict(format=request.output_format, crf=request.crf, audio=request.audio and ingest_result.has_audio,
                    fps=ingest_result.output_fps, driving=ingest_result.driving_sha256)
    source = _digest(dict(frames=store.read_json(layout.blend_record)["frames"][:num_frames], settings=settings))
    record = store.read_json(layout.encode_record) if store.exists(layout.encode_record) else {}
    if record.get("source") != source:
        record = dict(source=source, encoded=dict(_encode_output(job, ingest_result, num_frames),
                                                  side_by_side=write_side_by_side(job, ingest_result, num_frames)))
        store.write_json(layout.encode_record, record)
    encoded = record["encoded"]
    encoded["delivered"] = deliver(store, encoded["output_key"], request.output) if request.output else None
    return encoded


def _encode_output(job: JobContext, ingest_result: IngestResult, num_frames: int) -> dict:
    from controlnext_video.video import VideoWriter

    request, store, layout = job.request, job.store, job.layout
    key = layout.output_video(request.output_format)
    target = job.scratch(key.rsplit("/", 1)[-1])
    codec = {"mp4": "h264", "prores": "prores", "png": "png"}[request.output_format]
    audio = job.local(ingest_result.driving_key) if request.audio and ingest_result.has_audio else None
    options = dict(codec=codec, audio_source=audio, **(dict(crf=request.crf) if codec == "h264" else {}))
    with VideoWriter(target, ingest_result.fps, **options) as writer:
        for image in output_frames(job, num_frames):
            writer.write(image)
    encoded = writer.close()
    files = [store.put_file(p, f"{key}/{p.name}").key for p in sorted(target.iterdir())] if target.is_dir() \
        else [store.put_file(target, key).key]
    return dict(output_key=key, files=files, frames=encoded.frame_count, fps=str(encoded.fps),
                duration=encoded.duration, audio_seconds=encoded.audio_duration)


def write_side_by_side(job: JobContext, ingest_result: IngestResult, num_frames: int) -> str:
    """Reference | condition (the request's first: the pose by default) | result preview, for quick review."""
    from controlnext_video.video import decode_png
    from controlnext_video.video import write_side_by_side as write

    request, store, layout = job.request, job.store, job.layout
    picture = condition_renderer(job, request.conditions[0])[1]
    target = job.scratch("side_by_side.mp4")
    poses = (picture(i) for i in range(num_frames))
    write(target, decode_png(store.read_bytes(layout.reference_image)), poses, output_frames(job, num_frames),
          ingest_result.fps, height=min(PREVIEW_PANEL_HEIGHT, request.height))
    store.put_file(target, layout.side_by_side)
    return layout.side_by_side


def write_contact_sheet(job: JobContext, num_frames: int) -> str:
    """A few output frames, spread over the clip, beside their poses (the request's first
    condition) in one JPEG (for the report); a rerun that makes the same picture leaves the file
    untouched."""
    from controlnext_video.video import contact_sheet, decode_png, encode_jpeg, evenly_spaced

    request, store, layout = job.request, job.store, job.layout
    frames = evenly_spaced(num_frames, CONTACT_SHEET_FRAMES)
    picture = condition_renderer(job, request.conditions[0])[1]
    poses = [picture(i) for i in frames]
    results = [decode_png(store.read_bytes(layout.output_frame(i)), name=layout.output_frame(i)) for i in frames]
    sheet = encode_jpeg(contact_sheet(poses, results, panel_height=min(CONTACT_SHEET_PANEL_HEIGHT, request.height)))
    if not (store.exists(layout.contact_sheet) and store.read_bytes(layout.contact_sheet) == sheet):
        store.write_bytes(layout.contact_sheet, sheet)
    return layout.contact_sheet
