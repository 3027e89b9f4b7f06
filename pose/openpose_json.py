"""OpenPose JSON in both directions: one file per frame, or one sequence file.

Per frame, the layout OpenPose itself writes (`<name>_<frame:012d>_keypoints.json`):
`{"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": [x, y, c, ...], ...}]}`
with pixel coordinates; `pose_keypoints_2d` holds the 18 COCO/OpenPose-18 body points,
`face_keypoints_2d` 70 points (the 68 landmarks then two pupils, which this project does not
detect and writes as 0, 0, 0), the hands 21 points each. Like ControlNet's pose editors we add
`canvas_width` and `canvas_height`, so a file says what its pixels are relative to; files
without them can be read by passing the size.

The sequence file wraps per-frame objects with the clip's size, rate and frame indices, plus a
`controlnext_video` object per frame holding the missing/filled flags and the number of people
detected. Values round-trip exactly: float32 coordinates survive x * width / width in float64.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pose.errors import PoseInputError
from pose.layout import NUM_BODY, NUM_FACE, NUM_HAND
from pose.types import PoseFrame, PoseSequence

OPENPOSE_VERSION = 1.3
SEQUENCE_FORMAT = "controlnext-video/openpose-sequence"
SEQUENCE_VERSION = 1
FACE_POINTS_WRITTEN = 70  # OpenPose's face model: 68 landmarks + 2 pupils
_EXTRA_KEY = "controlnext_video"
_FRAME_FILE = re.compile(r"(\d+)_keypoints\.json$")


def _flat(points: np.ndarray, width: int, height: int, pad_to: int | None = None) -> list[float]:
    pts = points.astype(np.float64)
    pts[:, 0] *= width
    pts[:, 1] *= height
    if pad_to is not None and pad_to > len(pts):
        pts = np.concatenate([pts, np.zeros((pad_to - len(pts), 3))])
    return [float(v) for v in pts.reshape(-1)]


def _points(values: Any, count: int, width: int, height: int, where: str, accept: Iterable[int]) -> np.ndarray:
    if values is None or (isinstance(values, list) and len(values) == 0):
        return np.zeros((count, 3), np.float32)
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise PoseInputError(f"{where}: keypoints are not a list of numbers") from exc
    n, rem = divmod(arr.size, 3)
    if rem or n not in set(accept):
        raise PoseInputError(
            f"{where}: expected {' or '.join(str(a * 3) for a in accept)} values, got {arr.size}"
        )
    pts = arr.reshape(n, 3)[:count].copy()
    pts[:, 0] /= width
    pts[:, 1] /= height
    return pts.astype(np.float32)


def person_to_dict(frame: PoseFrame, width: int, height: int) -> dict[str, Any]:
    """One person in OpenPose JSON layout, pixel coordinates in a width x height image."""
    return {
        "person_id": [-1],
        "pose_keypoints_2d": _flat(frame.body, width, height),
        "face_keypoints_2d": _flat(frame.face, width, height, pad_to=FACE_POINTS_WRITTEN),
        "hand_left_keypoints_2d": _flat(frame.left_hand, width, height),
        "hand_right_keypoints_2d": _flat(frame.right_hand, width, height),
        "pose_keypoints_3d": [],
        "face_keypoints_3d": [],
        "hand_left_keypoints_3d": [],
        "hand_right_keypoints_3d": [],
    }


def person_from_dict(person: dict[str, Any], width: int, height: int, where: str = "person") -> PoseFrame:
    """Read one OpenPose person. Body must be 18 points (COCO-18); face 68 or 70 (pupils dropped)."""
    if not isinstance(person, dict):
        raise PoseInputError(f"{where}: a person must be a JSON object")
    body_values = person.get("pose_keypoints_2d")
    if body_values and len(body_values) == 25 * 3:
        raise PoseInputError(
            f"{where}: BODY_25 keypoints (75 values) are not supported; this project uses the "
            "18-point COCO/OpenPose-18 body"
        )
    return PoseFrame(
        body=_points(body_values, NUM_BODY, width, height, f"{where}.pose_keypoints_2d", [NUM_BODY]),
        left_hand=_points(
            person.get("hand_left_keypoints_2d"), NUM_HAND, width, height,
            f"{where}.hand_left_keypoints_2d", [NUM_HAND],
        ),
        right_hand=_points(
            person.get("hand_right_keypoints_2d"), NUM_HAND, width, height,
            f"{where}.hand_right_keypoints_2d", [NUM_HAND],
        ),
        face=_points(
            person.get("face_keypoints_2d"), NUM_FACE, width, height,
            f"{where}.face_keypoints_2d", [NUM_FACE, FACE_POINTS_WRITTEN],
        ),
    )


def frame_to_dict(frame: PoseFrame, width: int, height: int) -> dict[str, Any]:
    """An OpenPose per-frame object; a missing frame has no people."""
    return {
        "version": OPENPOSE_VERSION,
        "canvas_width": width,
        "canvas_height": height,
        "people": [] if frame.missing else [person_to_dict(frame, width, height)],
        _EXTRA_KEY: {
            "missing": frame.missing,
            "filled": frame.filled,
            "detected_people": frame.detected_people,
        },
    }


def _canvas(data: dict[str, Any], width: int | None, height: int | None, where: str) -> tuple[int, int]:
    w = data.get("canvas_width", width)
    h = data.get("canvas_height", height)
    if w is None or h is None:
        raise PoseInputError(
            f"{where}: no canvas_width/canvas_height in the file; pass width= and height= "
            "(the size of the image the pixel coordinates refer to)"
        )
    if not (isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0):
        raise PoseInputError(f"{where}: canvas size must be positive numbers, got {w!r} x {h!r}")
    return int(w), int(h)


def people_from_dict(
    data: dict[str, Any], width: int | None = None, height: int | None = None, where: str = "frame"
) -> tuple[list[PoseFrame], tuple[int, int]]:
    """All people of an OpenPose per-frame object, and the canvas size (width, height)."""
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise PoseInputError(f"{where}: not an OpenPose frame (no 'people' list)")
    w, h = _canvas(data, width, height, where)
    people = [person_from_dict(p, w, h, f"{where}.people[{i}]") for i, p in enumerate(data["people"])]
    return people, (w, h)


def frame_from_dict(
    data: dict[str, Any], width: int | None = None, height: int | None = None, where: str = "frame"
) -> PoseFrame:
    """The single person of a per-frame object as written by `frame_to_dict`.

    Objects from other tools may hold several people: read them with `people_from_dict` and
    pick one (`pose.select.PersonTracker`).
    """
    people, _ = people_from_dict(data, width, height, where)
    extra = data.get(_EXTRA_KEY, {})
    if len(people) > 1:
        raise PoseInputError(
            f"{where}: {len(people)} people in the frame; read them with people_from_dict and "
            "select one (pose.select.PersonTracker)"
        )
    if not people:
        return PoseFrame.empty(detected_people=int(extra.get("detected_people", 0)))
    return PoseFrame.from_keypoints(
        people[0].keypoints,
        filled=bool(extra.get("filled", False)),
        detected_people=int(extra.get("detected_people", 1)),
    )


def sequence_to_dict(seq: PoseSequence) -> dict[str, Any]:
    return {
        "format": SEQUENCE_FORMAT,
        "version": SEQUENCE_VERSION,
        "canvas_width": seq.width,
        "canvas_height": seq.height,
        "fps": f"{seq.fps.numerator}/{seq.fps.denominator}",
        "frames": [
            {"frame_index": idx, **frame_to_dict(f, seq.width, seq.height)}
            for idx, f in zip(seq.frame_indices, seq.frames)
        ],
    }


def sequence_from_dict(data: dict[str, Any], where: str = "sequence") -> PoseSequence:
    if not isinstance(data, dict) or data.get("format") != SEQUENCE_FORMAT:
        raise PoseInputError(f"{where}: not a pose sequence file (format must be {SEQUENCE_FORMAT!r})")
    if data.get("version") != SEQUENCE_VERSION:
        raise PoseInputError(f"{where}: unsupported sequence version {data.get('version')!r}")
    w, h = _canvas(data, None, None, where)
    frames_data = data.get("frames")
    if not isinstance(frames_data, list):
        raise PoseInputError(f"{where}: 'frames' must be a list")
    frames, indices = [], []
    for i, fd in enumerate(frames_data):
        fw = f"{where}.frames[{i}]"
        if not isinstance(fd, dict) or "frame_index" not in fd:
            raise PoseInputError(f"{fw}: missing frame_index")
        indices.append(int(fd["frame_index"]))
        frames.append(frame_from_dict(fd, w, h, fw))
    try:
        fps = Fraction(data["fps"])
    except (KeyError, ValueError, ZeroDivisionError, TypeError) as exc:
        raise PoseInputError(f"{where}: invalid or missing fps {data.get('fps')!r}") from exc
    return PoseSequence(frames=tuple(frames), width=w, height=h, fps=fps, frame_indices=tuple(indices))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PoseInputError(f"pose JSON not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PoseInputError(f"{path}: not valid JSON ({exc})") from exc


def _write_json(path: Path, data: Any) -> None:
    _write_text(Path(path), [json.dumps(data, separators=(",", ":"))])


def _write_text(path: Path, chunks: Iterable[str]) -> None:
    """Write chunks to a temporary file renamed into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for chunk in chunks:
            f.write(chunk)
    tmp.replace(path)


def write_sequence(seq: PoseSequence, path: str | Path) -> Path:
    """Write a sequence file, one frame at a time (no whole-file string in memory), atomically."""
    header = sequence_to_dict(PoseSequence(frames=(), width=seq.width, height=seq.height, fps=seq.fps))
    del header["frames"]
    head = json.dumps(header, separators=(",", ":"))[:-1] + ',"frames":['
    frames = (
        json.dumps({"frame_index": idx, **frame_to_dict(f, seq.width, seq.height)}, separators=(",", ":"))
        for idx, f in zip(seq.frame_indices, seq.frames)
    )

    def chunks():
        yield head
        for k, text in enumerate(frames):
            yield ("," if k else "") + text
        yield "]}"

    _write_text(Path(path), chunks())
    return Path(path)


def read_sequence(path: str | Path) -> PoseSequence:
    return sequence_from_dict(_read_json(Path(path)), where=str(path))


def write_frame(frame: PoseFrame, path: str | Path, width: int, height: int) -> Path:
    _write_json(Path(path), frame_to_dict(frame, width, height))
    return Path(path)


def read_frame(path: str | Path, width: int | None = None, height: int | None = None) -> PoseFrame:
    return frame_from_dict(_read_json(Path(path)), width, height, where=str(path))


def write_frames(seq: PoseSequence, directory: str | Path, prefix: str = "frame") -> list[Path]:
    """One OpenPose file per frame: `<prefix>_<source frame index:012d>_keypoints.json`."""
    directory = Path(directory)
    return [
        write_frame(f, directory / f"{prefix}_{idx:012d}_keypoints.json", seq.width, seq.height)
        for idx, f in zip(seq.frame_indices, seq.frames)
    ]


def read_frames(
    directory: str | Path,
    fps: Fraction | float | str,
    width: int | None = None,
    height: int | None = None,
) -> PoseSequence:
    """Read a folder of per-frame OpenPose files (sorted by the frame number in their names).

    Frames holding several people (files from other tools) keep the person a `PersonTracker`
    follows; frames with nobody are missing.
    """
    from pose.select import PersonTracker

    directory = Path(directory)
    files = sorted(
        ((int(m.group(1)), p) for p in directory.glob("*_keypoints.json") if (m := _FRAME_FILE.search(p.name))),
    )
    if not files:
        raise PoseInputError(f"no '*_<number>_keypoints.json' files in {directory}")
    tracker = PersonTracker()
    frames, size = [], None
    for _, path in files:
        data = _read_json(path)
        people, canvas = people_from_dict(data, width, height, where=str(path))
        if size is not None and canvas != size:
            raise PoseInputError(f"{path}: canvas {canvas} differs from the first file's {size}")
        size = canvas
        if len(people) <= 1 and _EXTRA_KEY in data:
            frames.append(frame_from_dict(data, width, height, where=str(path)))
        else:
            frames.append(tracker.select(people, canvas[0], canvas[1]))
    return PoseSequence(
        frames=tuple(frames), width=size[0], height=size[1], fps=fps,
        frame_indices=tuple(i for i, _ in files),
    )
