"""Alignment of the driving poses to the reference image's body.

Inputs: the driving sequence (normalized to the driving frames, `driving.width x driving.height`)
and the reference pose (normalized to the output frame: the reference image resized to cover
the output size and centre-cropped, see `pose.geometry`). Output: the driving sequence
expressed in the output frame (`width x height`), ready to render.

Methods:
- `retarget` (default): per-bone retargeting. Every bone of the driving skeleton keeps its 2-D
  direction and its foreshortening, and takes the reference's length: a bone is scaled by
  (reference length) / (driving rest length), where the driving rest length is a high
  percentile of that bone's length over the clip (a bone pointing at the camera looks short;
  its longest typical length is the true one). With `symmetric`, left and right bones share the
  longer of their two lengths (foreshortening only ever shortens). The skeleton is rebuilt from
  the root (neck) outwards. The root is anchored so that in the anchor frame (the first usable
  one) it sits on the reference's root, and follows the driving person's motion: scaled by the
  global body-size ratio (`root_motion="body"`, like the linear fit: a close-up character
  moves as far in body lengths as the driver, so may leave the frame), by the frame-size ratio
  (`"frame"`: the same fraction of the frame), or not at all (`"none"`: dancing in place).
  Hands are scaled by the palm-size ratio and attached to the wrists, the face by the
  eye-distance ratio and attached to the nose. Bones the reference does not show (legs of a
  waist-up portrait: an end not found, or outside the output frame even when a detector
  scored it) use the global ratio.
- `linear`: the reference pipeline's whole-clip linear fit, kept for parity:
  `y_ref ~ a_y * y_drive + b_y` by least squares over the body points found on the reference
  (nose, neck, shoulders, hips, knees, ankles, eyes, ears) and the driving frames with exactly
  one detected person; `a_x = a_y * (w_drive * H) / (h_drive * W)`,
  `b_x = mean(x_ref - a_x * x_drive)`; every point moves by the same map.
- `none`: no fitting; the driving frame is mapped into the output frame the way the reference
  image is (resize to cover, centre crop), so nothing is distorted.

Points with score 0 ("not detected", stored at 0, 0) stay at 0, 0 so they are never drawn.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from pose.errors import NoPersonError, PoseInputError
from pose.geometry import cover_crop, inside_picture
from pose.layout import (
    BODY_SLICE,
    FACE_SLICE,
    HAND_PALM_BONES,
    L_ANKLE,
    L_EAR,
    L_ELBOW,
    L_EYE,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    LEFT_HAND_SLICE,
    NECK,
    NOSE,
    NUM_BODY,
    PRESENT_SCORE,
    R_ANKLE,
    R_EAR,
    R_ELBOW,
    R_EYE,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    RIGHT_HAND_SLICE,
)
from pose.types import PoseFrame, PoseSequence

ALIGN_METHODS = ("retarget", "linear", "none")
ROOT_MOTIONS = ("body", "frame", "none")

# Body points the reference's linear fit uses (when found on the reference).
LINEAR_FIT_JOINTS = (NOSE, NECK, R_SHOULDER, L_SHOULDER, R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE,
                     R_EYE, L_EYE, R_EAR, L_EAR)

# The skeleton tree for retargeting, (parent, child), rooted at the neck.
BONES: tuple[tuple[int, int], ...] = (
    (NECK, R_SHOULDER), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST),
    (NECK, L_SHOULDER), (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST),
    (NECK, R_HIP), (R_HIP, R_KNEE), (R_KNEE, R_ANKLE),
    (NECK, L_HIP), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE),
    (NECK, NOSE), (NOSE, R_EYE), (R_EYE, R_EAR), (NOSE, L_EYE), (L_EYE, L_EAR),
)
# Mirror pairs (indices into BONES).
BONE_PAIRS = ((0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11), (13, 15), (14, 16))
# Bones whose ratio defines the global body-size ratio: shoulders, torso, neck.
CORE_BONES = (0, 3, 6, 9, 12)
HEAD_BONES = (13, 15)
ROOT_PRIORITY = (NECK, NOSE, R_SHOULDER, L_SHOULDER, R_HIP, L_HIP, R_EYE, L_EYE, R_EAR, L_EAR,
                 R_ELBOW, L_ELBOW, R_KNEE, L_KNEE, R_WRIST, L_WRIST, R_ANKLE, L_ANKLE)
_RIGHT_EYE_POINTS = slice(36, 42)  # iBUG-68 face points
_LEFT_EYE_POINTS = slice(42, 48)


def _check_inputs(driving: PoseSequence, reference: PoseFrame, width: int, height: int) -> None:
    if not isinstance(driving, PoseSequence):
        raise PoseInputError(f"driving must be a PoseSequence, got {type(driving).__name__}")
    if not isinstance(reference, PoseFrame):
        raise PoseInputError(f"reference must be a PoseFrame, got {type(reference).__name__}")
    for name, v in (("width", width), ("height", height)):
        if int(v) != v or v <= 0:
            raise PoseInputError(f"{name} must be a positive integer, got {v!r}")


def _map_present(kp: np.ndarray, fn) -> np.ndarray:
    """Apply fn to the x, y of points with a positive score; absent points stay 0, 0, 0."""
    out = kp.astype(np.float64, copy=True)
    present = out[..., 2] > 0
    out[..., :2] = np.where(present[..., None], fn(out[..., :2]), 0.0)
    return out


# ----------------------------------------------------------------------------- linear (reference)

@dataclass(frozen=True)
class LinearFit:
    """x_out = a_x * x + b_x, y_out = a_y * y + b_y in normalized coordinates."""

    a_x: float
    b_x: float
    a_y: float
    b_y: float
    frames_used: int


def fit_linear(driving: PoseSequence, reference: PoseFrame, *, width: int, height: int) -> LinearFit:
    """The reference pipeline's whole-clip linear fit (see the module docstring)."""
    _check_inputs(driving, reference, width, height)
    joints = [j for j in LINEAR_FIT_JOINTS if reference.body[j, 2] > PRESENT_SCORE]
    if not joints:
        raise NoPersonError(
            "linear alignment: the reference pose has none of the fitted body points (nose, neck, "
            "shoulders, hips, knees, ankles, eyes, ears); is there a person in the reference image?"
        )
    used = [f for f in driving.frames if not f.missing and not f.filled and f.detected_people == 1]
    if not used:
        raise NoPersonError(
            f"linear alignment: none of the {len(driving)} driving frames has exactly one detected "
            "person; use align='retarget', which follows one selected person"
        )
    drive = np.stack([f.body[joints] for f in used]).astype(np.float64)  # (F, J, 3)
    ref = np.broadcast_to(reference.body[joints].astype(np.float64), drive.shape)
    ok = drive[..., 2] > 0  # the reference keeps every driving point; absent ones have no position
    dy, ry = drive[..., 1][ok], ref[..., 1][ok]
    if dy.size < 2 or np.ptp(dy) == 0:
        raise PoseInputError("linear alignment: the driving poses give too few distinct points to fit")
    a_y, b_y = np.polyfit(dy, ry, 1)
    a_x = a_y * (driving.width * height) / (driving.height * width)
    b_x = float(np.mean(ref[..., 0][ok] - a_x * drive[..., 0][ok]))
    return LinearFit(a_x=float(a_x), b_x=b_x, a_y=float(a_y), b_y=float(b_y), frames_used=len(used))


def align_linear(driving: PoseSequence, reference: PoseFrame, *, width: int, height: int) -> PoseSequence:
    fit = fit_linear(driving, reference, width=width, height=height)
    a, b = np.array([fit.a_x, fit.a_y]), np.array([fit.b_x, fit.b_y])
    return driving.with_stack(_map_present(driving.stack(), lambda xy: xy * a + b), width=width, height=height)


def align_none(driving: PoseSequence, *, width: int, height: int) -> PoseSequence:
    """The driving frame resized to cover the output and centre-cropped, like the reference image."""
    g = cover_crop(driving.width, driving.height, width, height)
    return driving.with_stack(
        _map_present(driving.stack(), lambda xy: g.points_to_output(xy)), width=width, height=height
    )


# ----------------------------------------------------------------------------- retargeting

@dataclass(frozen=True)
class RetargetConfig:
    """rest_percentile: percentile of a driving bone's length over the clip taken as its rest
    length. symmetric: left and right bones share the longer length. present_score: score from
    which a body joint counts as found (the drawing threshold). anchor_frame: index (in the
    sequence) of the frame whose root is placed on the reference's root; None = the first frame
    where the root is found. root_motion: how the root's displacement from the anchor frame is
    scaled: "body" (body-size ratio), "frame" (frame-size ratio) or "none" (pinned). Frames
    where the anchor joint (normally the neck) is not found place their first found joint by
    the body-size ratio."""

    rest_percentile: float = 90.0
    symmetric: bool = True
    present_score: float = PRESENT_SCORE
    anchor_frame: int | None = None
    root_motion: str = "body"

    def __post_init__(self) -> None:
        if not 0 < self.rest_percentile <= 100:
            raise PoseInputError(f"rest_percentile must be in (0, 100], got {self.rest_percentile}")
        if self.root_motion not in ROOT_MOTIONS:
            raise PoseInputError(f"root_motion must be one of {', '.join(ROOT_MOTIONS)}, got {self.root_motion!r}")


@dataclass(frozen=True)
class RetargetPlan:
    """The per-bone scale factors and the root anchor retargeting applies (for reports)."""

    bone_ratios: tuple[float, ...]  # per BONES entry
    body_ratio: float
    left_hand_ratio: float
    right_hand_ratio: float
    face_ratio: float
    anchor_joint: int
    anchor_frame: int
    reference_anchor: tuple[float, float]  # output pixels
    driving_anchor: tuple[float, float]  # driving pixels
    root_scale: tuple[float, float]  # output pixels per driving pixel of root displacement


def _lengths(points: np.ndarray, present: np.ndarray, pairs) -> np.ndarray:
    """Lengths (..., len(pairs)); NaN where either end is absent."""
    a = np.array([p for p, _ in pairs])
    b = np.array([c for _, c in pairs])
    d = np.linalg.norm(points[..., a, :2] - points[..., b, :2], axis=-1)
    return np.where(present[..., a] & present[..., b], d, np.nan)


def _palm(points: np.ndarray, present_score: float) -> np.ndarray:
    """Mean palm-bone length of hands (..., 21, 3); NaN unless every palm point is found."""
    lengths = _lengths(points, points[..., 2] > present_score, HAND_PALM_BONES)
    return np.mean(lengths, axis=-1)


def _eye_distance(face: np.ndarray, present_score: float) -> np.ndarray:
    """Distance between the eye centres of faces (..., 68, 3); NaN unless all eye points are found."""
    right, left = face[..., _RIGHT_EYE_POINTS, :], face[..., _LEFT_EYE_POINTS, :]
    ok = (right[..., 2] > present_score).all(-1) & (left[..., 2] > present_score).all(-1)
    d = np.linalg.norm(right[..., :2].mean(-2) - left[..., :2].mean(-2), axis=-1)
    return np.where(ok, d, np.nan)


def _rest(values: np.ndarray, percentile: float) -> np.ndarray:
    """Per-column percentile over frames, ignoring NaN (NaN for all-NaN columns)."""
    out = np.full(values.shape[1:], np.nan)
    for idx in np.ndindex(values.shape[1:]):
        col = values[(slice(None),) + idx]
        col = col[np.isfinite(col)]
        if col.size:
            out[idx] = np.percentile(col, percentile)
    return out


def _rest_1d(values: np.ndarray, percentile: float) -> float:
    return float(_rest(values[:, None], percentile)[0])


def _nanmax(values) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    return float(np.nanmax(arr)) if np.isfinite(arr).any() else np.nan


def _nanmax_pair(values: np.ndarray, pairs) -> np.ndarray:
    out = values.copy()
    for i, j in pairs:
        out[i] = out[j] = _nanmax([values[i], values[j]])
    return out


def _ratio(ref: float, drive: float, fallback: float) -> float:
    r = ref / drive if np.isfinite(ref) and np.isfinite(drive) and drive > 0 else np.nan
    return float(r) if np.isfinite(r) and r > 0 else fallback


def plan_retarget(
    driving: PoseSequence, reference: PoseFrame, *, width: int, height: int, config: RetargetConfig = RetargetConfig()
) -> RetargetPlan:
    """Measure bone, hand and face ratios between the reference and the driving clip."""
    _check_inputs(driving, reference, width, height)
    thr = config.present_score
    # What the reference image does not show is not measured on it, whatever its score.
    ref = inside_picture(reference.keypoints) * np.array([width, height, 1.0])
    drive = driving.stack().astype(np.float64) * np.array([driving.width, driving.height, 1.0])
    usable = ~driving.missing
    if not usable.any():
        raise NoPersonError(f"retargeting: no person in any of the {len(driving)} driving frames")
    ref_body, drive_body = ref[BODY_SLICE], drive[usable][:, BODY_SLICE]
    if not (ref_body[:, 2] > thr).any():
        raise NoPersonError(
            "retargeting: the reference pose has no body joint; is there a person in the reference image?"
        )

    ref_len = _lengths(ref_body, ref_body[:, 2] > thr, BONES)
    drive_len = _rest(_lengths(drive_body, drive_body[..., 2] > thr, BONES), config.rest_percentile)
    if config.symmetric:
        ref_len, drive_len = _nanmax_pair(ref_len, BONE_PAIRS), _nanmax_pair(drive_len, BONE_PAIRS)
    raw = np.array([_ratio(r, d, np.nan) for r, d in zip(ref_len, drive_len)])
    core = raw[list(CORE_BONES)]
    body_ratio = float(np.nanmedian(core)) if np.isfinite(core).any() else (
        float(np.nanmedian(raw)) if np.isfinite(raw).any() else np.nan)
    if not np.isfinite(body_ratio):
        raise NoPersonError(
            "retargeting: the reference and the driving clip share no measurable bone (each bone "
            "needs both ends found); use align='linear' or align='none'"
        )
    ratios = np.where(np.isfinite(raw), raw, body_ratio)

    hand_slices = {"left": LEFT_HAND_SLICE, "right": RIGHT_HAND_SLICE}
    forearms = {"left": BONES.index((L_ELBOW, L_WRIST)), "right": BONES.index((R_ELBOW, R_WRIST))}
    ref_palm = {side: float(_palm(ref[sl], thr)) for side, sl in hand_slices.items()}
    drive_palm = {side: _rest_1d(_palm(drive[usable][:, sl], thr), config.rest_percentile)
                  for side, sl in hand_slices.items()}
    if config.symmetric:
        ref_palm = dict.fromkeys(ref_palm, _nanmax(ref_palm.values()))
        drive_palm = dict.fromkeys(drive_palm, _nanmax(drive_palm.values()))
    hand_ratio = {side: _ratio(ref_palm[side], drive_palm[side], ratios[forearms[side]]) for side in hand_slices}
    head = ratios[list(HEAD_BONES)].mean()
    face_ratio = _ratio(
        float(_eye_distance(ref[FACE_SLICE], thr)),
        _rest_1d(_eye_distance(drive[usable][:, FACE_SLICE], thr), config.rest_percentile),
        float(head),
    )

    # Anchor: the first root joint found both on the reference and in the anchor frame.
    anchor = config.anchor_frame
    if anchor is not None and not (0 <= anchor < len(driving) and usable[anchor]):
        raise PoseInputError(f"anchor_frame={anchor} is out of range or a missing frame")
    frames = np.flatnonzero(usable) if anchor is None else [anchor]
    root_scale = {
        "body": (body_ratio, body_ratio),
        "frame": (width / driving.width, height / driving.height),
        "none": (0.0, 0.0),
    }[config.root_motion]
    for joint in ROOT_PRIORITY:
        if ref_body[joint, 2] <= thr:
            continue
        hits = [f for f in frames if drive[f, joint, 2] > thr]
        if hits:
            return RetargetPlan(
                bone_ratios=tuple(float(r) for r in ratios), body_ratio=body_ratio,
                left_hand_ratio=hand_ratio["left"], right_hand_ratio=hand_ratio["right"], face_ratio=face_ratio,
                anchor_joint=joint, anchor_frame=int(hits[0]),
                reference_anchor=(float(ref_body[joint, 0]), float(ref_body[joint, 1])),
                driving_anchor=(float(drive[hits[0], joint, 0]), float(drive[hits[0], joint, 1])),
                root_scale=(float(root_scale[0]), float(root_scale[1])),
            )
    raise NoPersonError("retargeting: no body joint is found both on the reference and in the driving clip")


_NEIGHBOURS: dict[int, list[tuple[int, int]]] = {j: [] for j in range(NUM_BODY)}
for _b, (_p, _c) in enumerate(BONES):
    _NEIGHBOURS[_p].append((_c, _b))
    _NEIGHBOURS[_c].append((_p, _b))


def _retarget_frame(d: np.ndarray, plan: RetargetPlan, thr: float) -> np.ndarray:
    """One frame in driving pixels (128, 3) -> output pixels (128, 3)."""
    out = np.zeros_like(d)
    out[:, 2] = d[:, 2]
    body = d[BODY_SLICE]
    present = body[:, 2] > thr
    root = plan.anchor_joint if present[plan.anchor_joint] else next((j for j in ROOT_PRIORITY if present[j]), None)
    s = plan.body_ratio
    ref_anchor, drive_anchor = np.array(plan.reference_anchor), np.array(plan.driving_anchor)
    placed = np.zeros(NUM_BODY, bool)
    if root is not None:
        scale = np.array(plan.root_scale) if root == plan.anchor_joint else s
        out[root, :2] = ref_anchor + scale * (body[root, :2] - drive_anchor)
        placed[root] = True
        queue = deque([root])
        while queue:
            u = queue.popleft()
            for v, bone in _NEIGHBOURS[u]:
                if present[v] and not placed[v]:
                    out[v, :2] = out[u, :2] + (body[v, :2] - body[u, :2]) * plan.bone_ratios[bone]
                    placed[v] = True
                    queue.append(v)
        origin_out, origin_drive = out[root, :2], body[root, :2]
    else:
        origin_out, origin_drive = ref_anchor, drive_anchor
    # Joints not reached through found joints (and low-score ones, kept for the JSON) move
    # rigidly with the root at the body ratio.
    loose = ~placed & (body[:, 2] > 0)
    out[:NUM_BODY][loose, :2] = origin_out + (body[loose, :2] - origin_drive) * s

    def attach(sl: slice, joint: int, ratio: float) -> None:
        pts = d[sl]
        has = pts[:, 2] > 0
        if placed[joint]:
            base_out, base_drive, r = out[joint, :2], body[joint, :2], ratio
        else:
            base_out, base_drive, r = origin_out, origin_drive, s
        out[sl][has, :2] = base_out + (pts[has, :2] - base_drive) * r

    attach(LEFT_HAND_SLICE, L_WRIST, plan.left_hand_ratio)
    attach(RIGHT_HAND_SLICE, R_WRIST, plan.right_hand_ratio)
    attach(FACE_SLICE, NOSE, plan.face_ratio)
    return out


def retarget(
    driving: PoseSequence,
    reference: PoseFrame,
    *,
    width: int,
    height: int,
    config: RetargetConfig = RetargetConfig(),
) -> PoseSequence:
    """Per-bone retargeting of the driving clip onto the reference body (module docstring)."""
    plan = plan_retarget(driving, reference, width=width, height=height, config=config)
    drive = driving.stack().astype(np.float64) * np.array([driving.width, driving.height, 1.0])
    out = np.zeros_like(drive)
    for t, frame in enumerate(driving.frames):
        if not frame.missing:
            out[t] = _retarget_frame(drive[t], plan, config.present_score)
    out[..., :2] /= np.array([width, height], np.float64)
    out[..., :2] = np.where(out[..., 2:3] > 0, out[..., :2], 0.0)
    return driving.with_stack(out, width=width, height=height)


def align_poses(
    driving: PoseSequence,
    reference: PoseFrame,
    *,
    width: int,
    height: int,
    method: str = "retarget",
    retarget_config: RetargetConfig = RetargetConfig(),
) -> PoseSequence:
    """Align with the named method ("retarget", "linear" or "none")."""
    if method == "retarget":
        return retarget(driving, reference, width=width, height=height, config=retarget_config)
    if retarget_config != RetargetConfig():
        raise PoseInputError(f"retarget_config applies to method='retarget' only, not {method!r}")
    if method == "linear":
        return align_linear(driving, reference, width=width, height=height)
    if method == "none":
        _check_inputs(driving, reference, width, height)
        return align_none(driving, width=width, height=height)
    raise PoseInputError(f"unknown alignment method {method!r}; choose one of {', '.join(ALIGN_METHODS)}")
