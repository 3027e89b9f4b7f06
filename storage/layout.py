"""Where a job's artifacts live (see ``DESIGN.md``, "Storage layout of a job").

::

    jobs/<job-id>/identity.json            what the job is (write-once, `storage.identity`)
    jobs/<job-id>/request.json             the request of the latest run
    jobs/<job-id>/status.json              running / succeeded / failed, with times (`storage.jobs`)
    jobs/<job-id>/ingest.json              the probed inputs
    jobs/<job-id>/plan.json                the segment plan
    jobs/<job-id>/inputs/<name>
    jobs/<job-id>/poses/<name>             reference crop, OpenPose JSON, pose preview video
    jobs/<job-id>/segments/<k>/record.json (k zero-padded: 0000, 0001, ...)
    jobs/<job-id>/segments/<k>/progress.json  denoising steps done, while it renders
    jobs/<job-id>/segments/<k>/frames/frame_000000.png ...
    jobs/<job-id>/output/frames/frame_000000.png ...   blended frames
    jobs/<job-id>/output/<name>            video, side-by-side preview, report, stage records
    cache/<namespace>/<content-hash>/<name>
    uploads/<content-hash>/<name>          inputs uploaded for the UI's form (`controlnext-video upload`)

Frames are named one way everywhere (`FRAME_NAME`, as in the PNG sequences of
`controlnext_video.video`). All functions here are pure: they build keys, they do not touch
storage.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

JOBS_PREFIX = "jobs"
CACHE_PREFIX = "cache"
UPLOADS_PREFIX = "uploads"
#: Digits of the zero-padded segment index (sorted listings stay in render order).
SEGMENT_DIGITS = 4
#: File name of frame ``i`` in a segment (matches ``controlnext_video.video`` PNG sequences).
FRAME_NAME = "frame_{:06d}.png"
#: The output's name in `output/`, by output format.
OUTPUT_NAMES = {"mp4": "output.mp4", "prores": "output.mov", "png": "output_png"}
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]*")
_HEX_DIGEST = re.compile(r"[0-9a-f]{16,128}")


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(
            f"job id must be 1-128 letters, digits, '_' or '-' starting with a letter or digit, got {job_id!r}"
        )
    return job_id


def safe_name(name: str) -> str:
    """A key-safe file name from a user-supplied one: ``"Take 3 (final).MOV"`` -> ``"Take_3_final.MOV"``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]+", "_", ascii_name.rsplit("/", 1)[-1]).strip("._")
    cleaned = re.sub(r"_+(?=\.)", "", cleaned)
    if not cleaned:
        raise ValueError(f"file name {name!r} has no usable characters")
    return cleaned


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} must be a plain file name (letters, digits, ._=+-), got {name!r}; see safe_name()")
    return name


@dataclass(frozen=True)
class JobLayout:
    """Keys of one job's artifacts."""

    job_id: str

    def __post_init__(self) -> None:
        check_job_id(self.job_id)

    @property
    def prefix(self) -> str:
        return f"{JOBS_PREFIX}/{self.job_id}"

    @property
    def request(self) -> str:
        return f"{self.prefix}/request.json"

    @property
    def identity(self) -> str:
        return f"{self.prefix}/identity.json"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status.json"

    @property
    def ingest(self) -> str:
        return f"{self.prefix}/ingest.json"

    @property
    def plan(self) -> str:
        return f"{self.prefix}/plan.json"

    @property
    def inputs(self) -> str:
        return f"{self.prefix}/inputs"

    @property
    def poses(self) -> str:
        return f"{self.prefix}/poses"

    @property
    def segments(self) -> str:
        return f"{self.prefix}/segments"

    @property
    def output(self) -> str:
        return f"{self.prefix}/output"

    def input(self, name: str) -> str:
        return f"{self.inputs}/{_check_name(name, 'input name')}"

    def pose(self, name: str) -> str:
        return f"{self.poses}/{_check_name(name, 'pose file name')}"

    @property
    def reference_image(self) -> str:
        """The reference cropped to the output size (PNG)."""
        return self.pose("reference_crop.png")

    @property
    def reference_pose(self) -> str:
        return self.pose("reference_pose.json")

    @property
    def driving_poses(self) -> str:
        """Gaps filled and smoothed, in driving-frame pixels (OpenPose JSON sequence)."""
        return self.pose("driving_poses.json")

    @property
    def aligned_poses(self) -> str:
        """On the reference body, in output-frame pixels: what is rendered."""
        return self.pose("aligned_poses.json")

    @property
    def pose_preview(self) -> str:
        return self.pose("pose_preview.mp4")

    @property
    def conditions(self) -> str:
        return f"{self.prefix}/conditions"

    def condition_maps(self, condition: str) -> str:
        """A frame condition's maps (edges, mask): the reference's first, then every sampled
        driving frame's, at the output size (a folder of chunks, `storage.chunks`)."""
        return f"{self.conditions}/{_check_name(condition, 'condition name')}_maps"

    def condition_preview(self, condition: str) -> str:
        """Driving frame | its condition map, side by side (MP4)."""
        return f"{self.conditions}/{_check_name(condition, 'condition name')}_preview.mp4"

    def output_file(self, name: str) -> str:
        return f"{self.output}/{_check_name(name, 'output name')}"

    def output_frame(self, frame: int) -> str:
        """Blended output frame ``frame`` (PNG)."""
        return f"{self.output_file('frames')}/{_frame_name(frame)}"

    def output_video(self, output_format: str) -> str:
        """The encoded output: a file, or a folder for a PNG sequence."""
        if output_format not in OUTPUT_NAMES:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_NAMES)}, got {output_format!r}")
        return self.output_file(OUTPUT_NAMES[output_format])

    @property
    def blend_record(self) -> str:
        return self.output_file("blend.json")

    @property
    def encode_record(self) -> str:
        return self.output_file("encode.json")

    @property
    def side_by_side(self) -> str:
        return self.output_file("side_by_side.mp4")

    @property
    def report(self) -> str:
        return self.output_file("report.md")

    @property
    def contact_sheet(self) -> str:
        """Output frames beside their poses, as one picture (JPEG)."""
        return self.output_file("contact_sheet.jpg")

    def segment(self, index: int) -> str:
        """Folder of segment ``index``."""
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 10**SEGMENT_DIGITS:
            raise ValueError(f"segment index must be an int in [0, {10**SEGMENT_DIGITS}), got {index!r}")
        return f"{self.segments}/{index:0{SEGMENT_DIGITS}d}"

    def segment_record(self, index: int) -> str:
        """The record whose presence marks segment ``index`` as done."""
        return f"{self.segment(index)}/record.json"

    def segment_progress(self, index: int) -> str:
        """The denoising steps a segment has done (written while it renders)."""
        return f"{self.segment(index)}/progress.json"

    def segment_frames(self, index: int) -> str:
        return f"{self.segment(index)}/frames"

    def segment_frame(self, index: int, frame: int) -> str:
        return f"{self.segment_frames(index)}/{_frame_name(frame)}"


def _frame_name(frame: int) -> str:
    if not isinstance(frame, int) or frame < 0:
        raise ValueError(f"frame index must be an int >= 0, got {frame!r}")
    return FRAME_NAME.format(frame)


def cache_key(namespace: str, digest: str, name: str) -> str:
    """Key of a content-addressed cache entry, e.g. poses of a clip by its SHA-256 and detector:
    ``cache_key("poses-mediapipe", clip_sha256, "poses.json")``."""
    _check_name(namespace, "cache namespace")
    return f"{CACHE_PREFIX}/{namespace}/{_check_digest(digest, 'cache')}/{_check_name(name, 'cache file name')}"


def upload_key(digest: str, name: str) -> str:
    """Key of an uploaded input: its content's SHA-256 and its (key-safe) file name, so the same
    file always gets the same key (and two files one only if their hashes' first 64 bits agree)."""
    return f"{UPLOADS_PREFIX}/{_check_digest(digest, 'upload')[:16]}/{_check_name(name, 'upload name')}"


def _check_digest(digest: str, what: str) -> str:
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise ValueError(f"{what} digest must be 16-128 lowercase hex digits, got {digest!r}")
    return digest
