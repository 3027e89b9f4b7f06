"""The work of each stage of a render job, as plain functions (the Prefect tasks wrap them).

Stages pass small records and store keys, never frames: inputs, poses, segment frames and outputs
live in the artifact store under the job's folder (`storage.JobLayout`). Every stage is
restartable: what a stage has written is found and reused when a job runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from controlnext_video.segments import SegmentPlan, blend_frames, plan_segments
from storage import ArtifactStore, JobLayout

from .request import RenderRequest

REFERENCE_IMAGE = "reference_crop.png"
REFERENCE_POSE = "reference_pose.json"
DRIVING_POSES = "driving_poses.json"
ALIGNED_POSES = "aligned_poses.json"
POSE_PREVIEW = "pose_preview.mp4"
PLAN = "plan.json"
INGEST = "ingest.json"
HEARTBEAT = "heartbeat.json"
BLENDED_FRAMES = "frames"
BLEND_RECORD = "blend.json"
ENCODE_RECORD = "encode.json"
OUTPUT_NAMES = {"mp4": "output.mp4", "prores": "output.mov", "png": "output_png"}
SIDE_BY_SIDE = "side_by_side.mp4"
# Cap on the side-by-side preview's panel height (it is for review, not delivery).
PREVIEW_PANEL_HEIGHT = 512


class JobInputError(ValueError):
    """An input of the job is unusable; the message names the file and the problem."""


def worker_name() -> str:
    """Who is doing the work: `WORKER_ID` (set per GPU worker) or the host name and process."""
    return os.environ.get("WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"


def local_work_dir() -> Path:
    """A local scratch folder for files that tools need on disk (decoders, encoders)."""
    root = Path(os.environ.get("CONTROLNEXT_WORK_DIR") or Path(tempfile.gettempdir()) / "controlnext-video")
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_of(path: Path) -> str:
    from storage.store import sha256_file

    return sha256_file(path)


def fetch(url: str, local_dir: Path, what: str) -> Path:
    """A local copy of an input given as a path or an fsspec URL (s3://, http://, ...)."""
    if "://" not in url:
        path = Path(url).expanduser()
        if not path.is_file():
            raise JobInputError(f"{what} not found: {url}")
        return path
    import fsspec

    target = local_dir / Path(url.split("?")[0]).name
    try:
        with fsspec.open(url, "rb") as src, open(target.with_suffix(target.suffix + ".partial"), "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
    except FileNotFoundError as exc:
        raise JobInputError(f"{what} not found: {url}") from exc
    os.replace(target.with_suffix(target.suffix + ".partial"), target)
    return target


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

    @classmethod
    def open(cls, store_url: str, job_id: str) -> "JobContext":
        store = ArtifactStore(store_url)
        layout = JobLayout(job_id)
        request = RenderRequest.model_validate(store.read_json(layout.request))
        return cls(store, layout, request)

    def local_input(self, key: str) -> Path:
        """A local file for a stored input (the store's own path when it is local)."""
        try:
            return self.store.local_path(key)
        except Exception:
            target = local_work_dir() / self.layout.job_id / Path(key).name
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                self.store.get_file(key, target)
            return target


# --------------------------------------------------------------------------- ingest


def check_models(request: RenderRequest) -> dict:
    """Check the model directory (and DWPose files) before any other work; return their fingerprints.

    The job's worker must see the model directory the GPU workers load (the compose stack mounts
    it read-only on both), so a missing file fails the job in seconds, not after pose detection.
    """
    from controlnext_video.model_dir import check_model_dir
    from controlnext_video.weights import WeightsError

    try:
        fingerprints = dict(model=check_model_dir(request.model).fingerprint())
    except (FileNotFoundError, WeightsError) as exc:
        raise JobInputError(f"model: {exc}") from exc
    if request.pose_backend == "dwpose":
        digest = hashlib.sha256()
        for path in dwpose_files(request):
            if not path.is_file():
                raise JobInputError(f"DWPose model file not found: {path}")
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        fingerprints["pose_models"] = digest.hexdigest()
    return fingerprints


def dwpose_files(request: RenderRequest) -> tuple[Path, Path]:
    models = Path(request.dwpose_models)
    return models / "yolox_l.onnx", models / "dw-ll_ucoco_384.onnx"


def job_identity(request: RenderRequest, reference_sha256: str, driving_sha256: str, models: dict) -> dict:
    """What the job is: the inputs' hashes, the model files and every setting that changes pixels."""
    content = dict(reference_sha256=reference_sha256, driving_sha256=driving_sha256, models=models,
                   settings=request.pixel_settings())
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return dict(content, digest=digest)


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

    The job id is derived from the job's content unless given. The same content resumes the same
    job; a given id that already names different content is refused before anything is written.
    """
    from pose.errors import PoseInputError, PoseInputWarning
    from pose.extract import prepare_reference

    from controlnext_video.video import DamagedVideoWarning, VideoError, output_rate, planned_frame_count, probe

    if not request.reference or not request.driving:
        raise JobInputError("the request needs both a reference image and a driving video")
    models = check_models(request)
    scratch = Path(tempfile.mkdtemp(dir=local_work_dir(), prefix="ingest-"))
    reference = fetch(request.reference, scratch, "reference image")
    driving = fetch(request.driving, scratch, "driving video")
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

    ref_sha, clip_sha = sha256_of(reference), sha256_of(driving)
    store = ArtifactStore(request.store)
    job_id = claim_job_id(store, request, job_identity(request, ref_sha, clip_sha, models))
    layout = JobLayout(job_id)
    reference_key = layout.input("reference" + (reference.suffix.lower() or ".png"))
    driving_key = layout.input("driving" + (driving.suffix.lower() or ".mp4"))
    for local, key, digest in ((reference, reference_key, ref_sha), (driving, driving_key, clip_sha)):
        if not (store.exists(key) and store.sha256(key) == digest):
            store.put_file(local, key)
    store.write_json(layout.request, request.model_copy(update={"job_id": job_id}).model_dump())
    result = IngestResult(
        job_id=job_id, reference_key=reference_key, driving_key=driving_key, reference_sha256=ref_sha,
        driving_sha256=clip_sha, source_fps=str(info.fps), output_fps=str(output_rate(info.fps, request.stride)),
        num_frames=num_frames, has_audio=info.has_audio, video=info.to_dict(), notes=notes,
    )
    store.write_json(layout.pose(INGEST), asdict(result))
    return result


# --------------------------------------------------------------------------- poses


def detect_poses(job: JobContext, ingest_result: IngestResult, progress: Callable[[int, int], None]) -> str:
    """Detect (or reuse cached) smoothed driving poses and the reference pose; returns the cache key.

    Driving poses are cached under `cache/poses/` by clip content and detection settings, so
    another job on the same clip skips detection.
    """
    from pose import openpose_json
    from pose.detect import make_detector
    from pose.extract import clip_frames, detect_frames, detect_reference, prepare_reference
    from pose.smooth import fill_gaps, smooth_sequence
    from storage.layout import cache_key

    from controlnext_video.video import encode_png

    request, store, layout = job.request, job.store, job.layout
    detector_args = dict(backend=request.pose_backend, device="auto")
    if request.pose_backend == "dwpose":
        detector_args.update(zip(("det_model", "pose_model"), dwpose_files(request)))

    reference = prepare_reference(job.local_input(ingest_result.reference_key), height=request.height,
                                  width=request.width)
    store.write_bytes(layout.pose(REFERENCE_IMAGE), encode_png(reference))
    detector = make_detector(video=False, **detector_args)
    try:
        ref_pose = detect_reference(reference, detector, source=f"reference image {request.reference}")
    finally:
        detector.close()
    store.write_json(layout.pose(REFERENCE_POSE), openpose_json.frame_to_dict(ref_pose, request.width, request.height))

    settings = json.dumps(dict(backend=request.pose_backend, stride=request.stride, max_frames=request.max_frames,
                               version=3), sort_keys=True)
    digest = hashlib.sha256(f"{ingest_result.driving_sha256}:{settings}".encode()).hexdigest()
    cached = cache_key("poses", digest, DRIVING_POSES)
    if not store.exists(cached):
        clip = job.local_input(ingest_result.driving_key)
        total = ingest_result.num_frames
        detector = make_detector(video=True, **detector_args)
        try:
            _, frames = clip_frames(clip, stride=request.stride, max_frames=request.max_frames or None)
            detected = detect_frames(
                frames, detector, fps=ingest_result.fps, source=f"driving video {request.driving}",
                on_frame=lambda i, pose: progress(i // request.stride + 1, total),
            )
        finally:
            detector.close()
        smoothed = smooth_sequence(fill_gaps(detected))
        store.write_json(cached, openpose_json.sequence_to_dict(smoothed))
    store.write_json(layout.pose(DRIVING_POSES), store.read_json(cached))
    return cached


def align(job: JobContext) -> tuple[int, list[int]]:
    """Align the driving poses to the reference body; returns the number of aligned frames and the
    output frames left without a pose."""
    from pose import openpose_json
    from pose.align import align_poses

    request, store, layout = job.request, job.store, job.layout
    driving = openpose_json.sequence_from_dict(store.read_json(layout.pose(DRIVING_POSES)))
    reference = load_reference_pose(job)
    aligned = align_poses(driving, reference, width=request.width, height=request.height, method=request.align)
    store.write_json(layout.pose(ALIGNED_POSES), openpose_json.sequence_to_dict(aligned))
    return len(aligned), [int(i) for i in np.flatnonzero(aligned.missing)]


def load_reference_pose(job: JobContext):
    from pose import openpose_json

    return openpose_json.frame_from_dict(job.store.read_json(job.layout.pose(REFERENCE_POSE)),
                                         where=job.layout.pose(REFERENCE_POSE))


def load_aligned(job: JobContext):
    from pose import openpose_json

    return openpose_json.sequence_from_dict(job.store.read_json(job.layout.pose(ALIGNED_POSES)))


def write_pose_preview(job: JobContext, ingest_result: IngestResult) -> str:
    """Driving frames with their skeletons beside the aligned skeletons on the reference."""
    from pose import openpose_json
    from pose.preview import write_preview

    from controlnext_video.video import decode_png

    request, store, layout = job.request, job.store, job.layout
    driving = openpose_json.sequence_from_dict(store.read_json(layout.pose(DRIVING_POSES)))
    target = local_work_dir() / layout.job_id / POSE_PREVIEW
    target.parent.mkdir(parents=True, exist_ok=True)
    write_preview(
        job.local_input(ingest_result.driving_key), decode_png(store.read_bytes(layout.pose(REFERENCE_IMAGE))),
        driving, load_aligned(job), target, stride=request.stride, max_frames=request.max_frames or None,
        panel_height=min(PREVIEW_PANEL_HEIGHT, request.height), progress=False,
    )
    store.put_file(target, layout.pose(POSE_PREVIEW))
    return layout.pose(POSE_PREVIEW)


# --------------------------------------------------------------------------- plan


def plan(job: JobContext, num_frames: int) -> SegmentPlan:
    request = job.request
    segment_plan = plan_segments(num_frames, request.segment_length, request.segment_overlap)
    job.store.write_json(
        job.layout.pose(PLAN),
        dict(num_frames=num_frames, segment_length=request.segment_length, segment_overlap=request.segment_overlap,
             segments=[[s.index, s.start, s.stop] for s in segment_plan.segments]),
    )
    return segment_plan


def load_plan(job: JobContext) -> SegmentPlan:
    data = job.store.read_json(job.layout.pose(PLAN))
    return plan_segments(data["num_frames"], data["segment_length"], data["segment_overlap"])


# --------------------------------------------------------------------------- segments


def segment_done(job: JobContext, index: int) -> bool:
    return job.store.exists(job.layout.segment_record(index))


def heartbeat_key(job: JobContext, index: int) -> str:
    return f"{job.layout.segment(index)}/{HEARTBEAT}"


def read_heartbeat(job: JobContext, index: int):
    try:
        return job.store.read_json(heartbeat_key(job, index))
    except FileNotFoundError:
        return None


class Heartbeat:
    """Writes `segments/<k>/heartbeat.json` every `interval` seconds from a daemon thread.

    It stops when the process dies, which is how the orchestrator tells a lost worker from a
    slow one (its own clock, no clock sync needed between machines).
    """

    def __init__(self, job: JobContext, index: int, attempt: int, interval: float) -> None:
        self._job, self._index, self._attempt, self._interval = job, index, attempt, interval
        self.step = 0
        self._stop = threading.Event()
        self._count = 0
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-segment-{index}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)

    def _beat(self) -> None:
        self._count += 1
        self._job.store.write_json(heartbeat_key(self._job, self._index), dict(
            attempt=self._attempt, beat=self._count, step=self.step, worker=worker_name(), time=time.time()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception:  # a storage hiccup must not kill the render; the next beat retries
                pass


def render_segment_frames(
    job: JobContext,
    index: int,
    pipe,
    *,
    callback: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Render segment `index` and write its frames (PNG) as they are decoded; returns frame records."""
    from pose.render import render_pose

    from controlnext_video.segments import render_segment
    from controlnext_video.video import decode_png, encode_png

    request, store, layout = job.request, job.store, job.layout
    segment = load_plan(job).segments[index]
    aligned = load_aligned(job)
    reference = decode_png(store.read_bytes(layout.pose(REFERENCE_IMAGE)))
    h, w = request.height, request.width
    poses = [render_pose(load_reference_pose(job), h, w)] + [
        render_pose(aligned[i], h, w) for i in range(segment.start, segment.stop)
    ]
    frames = []
    for frame_index, frame in render_segment(
        pipe, reference, poses, segment, seed=request.seed, decode_chunk_size=request.decode_chunk_size,
        callback=callback, num_inference_steps=request.steps, min_guidance_scale=request.guidance_min,
        max_guidance_scale=request.guidance_max, window_size=request.window, overlap=request.overlap,
        control_scale=request.control_scale,
    ):
        ref = store.write_bytes(layout.segment_frame(index, frame_index), encode_png(frame))
        frames.append(dict(frame=frame_index, sha256=ref.sha256))
    return frames


def remove_temporaries(job: JobContext, segments: list[int] | None = None) -> int:
    """Delete what killed writers left behind (hidden temporary files) in the given segments' folders,
    or the whole job's folder; only files older than the job's stale timeout, so a live writer's
    file is never taken from under it."""
    prefixes = [job.layout.segment(s) for s in segments] if segments is not None else [job.layout.prefix]
    return sum(job.store.remove_temporaries(p, older_than=job.request.stale_after_seconds) for p in prefixes)


def write_segment_record(job: JobContext, index: int, record: dict) -> None:
    job.store.write_json(job.layout.segment_record(index), record)


# --------------------------------------------------------------------------- blend and encode


def blended_frames(job: JobContext, segment_plan: SegmentPlan) -> Iterator[np.ndarray]:
    """Stream the output frames: each frame cross-faded from the segments that rendered it."""
    from controlnext_video.video import decode_png

    store, layout = job.store, job.layout
    for frame in range(segment_plan.num_frames):
        parts = {}
        for segment in segment_plan.segments_for_frame(frame):
            key = layout.segment_frame(segment.index, frame)
            parts[segment.index] = decode_png(store.read_bytes(key), name=key).astype(np.float32) / 255.0
        yield np.round(blend_frames(segment_plan, frame, parts) * 255.0).clip(0, 255).astype(np.uint8)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def blend(job: JobContext, segment_plan: SegmentPlan, progress: Callable[[int, int], None]) -> str:
    """Write the blended output frames (lossless PNG) under the job's output folder.

    `output/blend.json` records what they were blended from (the segment records); when a rerun
    finds the same sources, the frames are left as they are.
    """
    from controlnext_video.video import encode_png

    store, layout = job.store, job.layout
    prefix = layout.output_file(BLENDED_FRAMES)
    source = _digest([store.sha256(layout.segment_record(s.index)) for s in segment_plan.segments]
                     + [segment_plan.num_frames])
    record_key = layout.output_file(BLEND_RECORD)
    if store.exists(record_key) and store.read_json(record_key).get("source") == source:
        progress(segment_plan.num_frames, segment_plan.num_frames)
        return prefix
    frames = []
    for frame, image in enumerate(blended_frames(job, segment_plan)):
        frames.append(store.write_bytes(f"{prefix}/{frame:06d}.png", encode_png(image)).sha256)
        progress(frame + 1, segment_plan.num_frames)
    store.write_json(record_key, dict(source=source, frames=frames))
    return prefix


def output_frames(job: JobContext, num_frames: int) -> Iterator[np.ndarray]:
    from controlnext_video.video import decode_png

    prefix = job.layout.output_file(BLENDED_FRAMES)
    for frame in range(num_frames):
        key = f"{prefix}/{frame:06d}.png"
        yield decode_png(job.store.read_bytes(key), name=key)


def encode(job: JobContext, ingest_result: IngestResult, num_frames: int) -> dict:
    """Encode the output at the clip's exact rate / stride with its audio, and the side-by-side
    preview; copy the output to `request.output`.

    `output/encode.json` records the blended frames and settings it was made from: a rerun with
    the same ones leaves the files untouched (the encoder is deterministic, so the bytes would be
    the same anyway).
    """
    request, store, layout = job.request, job.store, job.layout
    settings = dict(format=request.output_format, crf=request.crf, audio=request.audio and ingest_result.has_audio,
                    fps=ingest_result.output_fps, driving=ingest_result.driving_sha256)
    source = _digest(dict(frames=store.read_json(layout.output_file(BLEND_RECORD))["frames"][:num_frames],
                          settings=settings))
    record_key = layout.output_file(ENCODE_RECORD)
    if store.exists(record_key):
        record = store.read_json(record_key)
        if record.get("source") == source:
            encoded = record["encoded"]
            encoded["delivered"] = deliver(job, encoded["output_key"]) if request.output else None
            return encoded
    encoded = _encode_output(job, ingest_result, num_frames)
    encoded["side_by_side"] = write_side_by_side(job, ingest_result, num_frames)
    store.write_json(record_key, dict(source=source, encoded=encoded))
    encoded["delivered"] = deliver(job, encoded["output_key"]) if request.output else None
    return encoded


def _encode_output(job: JobContext, ingest_result: IngestResult, num_frames: int) -> dict:
    from controlnext_video.video import VideoWriter

    request, store, layout = job.request, job.store, job.layout
    name = OUTPUT_NAMES[request.output_format]
    codec = {"mp4": "h264", "prores": "prores", "png": "png"}[request.output_format]
    target = local_work_dir() / layout.job_id / name
    target.parent.mkdir(parents=True, exist_ok=True)
    audio = job.local_input(ingest_result.driving_key) if request.audio and ingest_result.has_audio else None
    options = dict(codec=codec, audio_source=audio)
    if codec == "h264":
        options["crf"] = request.crf
    with VideoWriter(target, ingest_result.fps, **options) as writer:
        for image in output_frames(job, num_frames):
            writer.write(image)
    encoded = writer.close()
    keys = []
    if target.is_dir():
        for path in sorted(target.iterdir()):
            keys.append(store.put_file(path, f"{layout.output_file(name)}/{path.name}").key)
    else:
        keys.append(store.put_file(target, layout.output_file(name)).key)
    return dict(output_key=layout.output_file(name), files=keys, frames=encoded.frame_count, fps=str(encoded.fps),
                duration=encoded.duration, audio_seconds=encoded.audio_duration)


def deliver(job: JobContext, output_key: str) -> str:
    """Copy the stored output to where the request asked for it (path or fsspec URL).

    A file already there with the same content is left untouched.
    """
    import fsspec

    store, destination = job.store, job.request.output
    keys = store.list(output_key) or [output_key]
    fs, root = fsspec.core.url_to_fs(destination)
    for key in keys:
        target = f"{root}/{key.rsplit('/', 1)[-1]}" if key != output_key else root
        if fs.isfile(target) and _same_content(fs, target, store, key):
            continue
        fs.makedirs(target.rsplit("/", 1)[0] or "/", exist_ok=True)
        with store.open_read(key) as src, fs.open(target + ".partial", "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
        fs.mv(target + ".partial", target)
    return destination


def _same_content(fs, path: str, store: ArtifactStore, key: str) -> bool:
    if fs.size(path) != store.size(key):
        return False
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest() == store.sha256(key)


def write_side_by_side(job: JobContext, ingest_result: IngestResult, num_frames: int) -> str:
    """Reference | pose | result preview, for quick review."""
    from pose.render import render_pose

    from controlnext_video.video import decode_png
    from controlnext_video.video import write_side_by_side as write

    request, store, layout = job.request, job.store, job.layout
    aligned = load_aligned(job)
    reference = decode_png(store.read_bytes(layout.pose(REFERENCE_IMAGE)))
    target = local_work_dir() / layout.job_id / SIDE_BY_SIDE
    poses = (render_pose(aligned[i], request.height, request.width) for i in range(num_frames))
    write(target, reference, poses, output_frames(job, num_frames), ingest_result.fps,
          height=min(PREVIEW_PANEL_HEIGHT, request.height))
    store.put_file(target, layout.output_file(SIDE_BY_SIDE))
    return layout.output_file(SIDE_BY_SIDE)
