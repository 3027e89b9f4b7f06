"""Skeleton rendering in the convention the ControlNeXt-SVD weights were trained on.

Our own drawing code (the drawing utility that circulates with OpenPose carries a non-commercial
licence). The convention (`shared/reference/controlnext-svd-v2.md`, section 8):

- a black canvas whose shorter side is `canvas_short_side` (2160) px, drawn on in "BGR" channel
  order, then resized to the output size and converted to RGB;
- body: the 17 OpenPose-18 limbs as filled ellipses of half-width 4, colour = palette times the
  product of the two joint scores (truncated to integers), skipped when either score is below
  0.3; the whole canvas then times 0.6; joints scoring above 0.3 as filled circles of radius 4
  in their palette colour times the score;
- hands (left, then right): 20 bones as lines of thickness 2 coloured at HSV hue i/20 times the
  product of the two scores, then joints radius 4 with the score in the third canvas channel
  (red in the final image); drawn when the pixel coordinates are at least 1;
- face: 68 points, radius 3, grey level = score, same pixel rule.

Pixel positions are truncated to integers as the reference does (the ellipse centre, half
length and angle included), so strokes land on the same pixels.

Resize: the reference resizes the 2160-px canvas with OpenCV's default, bilinear
(`cv2.INTER_LINEAR`), which at a 3.75x reduction samples without antialiasing (thin strokes
come out broken in places). The weights were trained on exactly those images, so `linear` is
the default; `area` (antialiased) is available for previews.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pose.errors import PoseInputError, require
from pose.layout import BODY_LIMBS, BODY_PALETTE, HAND_BONES, NUM_BODY
from pose.types import PoseFrame

# Coordinates are clipped to this many canvas sizes around the canvas before integer
# conversion, so a wild point cannot overflow OpenCV's int32 geometry.
_COORD_LIMIT = 8


@dataclass(frozen=True)
class RenderStyle:
    """Tunable numbers of the drawing convention; the defaults are the trained-on values."""

    canvas_short_side: int = 2160
    score_threshold: float = 0.3
    limb_half_width: int = 4
    body_darken: float = 0.6
    joint_radius: int = 4
    hand_thickness: int = 2
    hand_joint_radius: int = 4
    face_radius: int = 3
    draw_body: bool = True
    draw_hands: bool = True
    draw_face: bool = True
    interpolation: str = "linear"  # "linear" (the reference's cv2 default) or "area"

    def __post_init__(self) -> None:
        if self.interpolation not in ("linear", "area"):
            raise PoseInputError(f"RenderStyle.interpolation must be 'linear' or 'area', got {self.interpolation!r}")
        for name in ("canvas_short_side", "limb_half_width", "joint_radius", "hand_thickness",
                     "hand_joint_radius", "face_radius"):
            if getattr(self, name) <= 0:
                raise PoseInputError(f"RenderStyle.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.body_darken <= 1:
            raise PoseInputError(f"RenderStyle.body_darken must be in [0, 1], got {self.body_darken}")


DEFAULT_STYLE = RenderStyle()


def canvas_size(height: int, width: int, style: RenderStyle = DEFAULT_STYLE) -> tuple[int, int]:
    """(height, width) of the drawing canvas for an output of height x width."""
    short = min(height, width)
    ratio = style.canvas_short_side / short if short != style.canvas_short_side else 1.0
    return int(height * ratio), int(width * ratio)


def _pixel(v: float, size: int) -> float:
    limit = _COORD_LIMIT * size
    return min(max(float(v) * size, -limit), limit)


def _scaled(color: Sequence[int], factor: float) -> tuple[int, int, int]:
    return tuple(int(c * factor) for c in color)


def _darken_table(factor: float) -> np.ndarray:
    """uint8 -> int(value * factor), the same float64 product and truncation as
    `(canvas * factor).astype(np.uint8)`, as a lookup table (much faster on a 4K canvas)."""
    return (np.arange(256, dtype=np.uint8) * factor).astype(np.uint8)


def _draw_bodies(cv2, canvas: np.ndarray, people: Sequence[PoseFrame], style: RenderStyle) -> None:
    h, w = canvas.shape[:2]
    thr = style.score_threshold
    drawn = []  # polygons, to darken only the region they cover (the rest of the canvas is 0)
    for limb, (a, b) in enumerate(BODY_LIMBS):
        for person in people:
            pa, pb = person.body[a], person.body[b]
            if pa[2] < thr or pb[2] < thr:
                continue
            xa, ya = _pixel(pa[0], w), _pixel(pa[1], h)
            xb, yb = _pixel(pb[0], w), _pixel(pb[1], h)
            half_length = math.hypot(xa - xb, ya - yb) / 2
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            polygon = cv2.ellipse2Poly(
                (int((xa + xb) / 2), int((ya + yb) / 2)),
                (int(half_length), style.limb_half_width),
                int(angle), 0, 360, 1,
            )
            cv2.fillConvexPoly(canvas, polygon, _scaled(BODY_PALETTE[limb], float(pa[2]) * float(pb[2])))
            drawn.append(polygon)
    if drawn:
        pts = np.concatenate(drawn)
        x0, y0 = np.maximum(pts.min(axis=0), 0)
        x1, y1 = np.minimum(pts.max(axis=0) + 1, (w, h))
        if x1 > x0 and y1 > y0:
            region = canvas[y0:y1, x0:x1]
            region[...] = cv2.LUT(region, _darken_table(style.body_darken))
    for joint in range(NUM_BODY):
        for person in people:
            x, y, score = person.body[joint]
            if score <= thr:
                continue
            cv2.circle(
                canvas, (int(_pixel(x, w)), int(_pixel(y, h))), style.joint_radius,
                _scaled(BODY_PALETTE[joint], float(score)), thickness=-1,
            )


def _hand_colour(bone: int, score: int) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(bone / len(HAND_BONES), 1.0, 1.0)
    return (r * score, g * score, b * score)


def _draw_hands(cv2, canvas: np.ndarray, people: Sequence[PoseFrame], style: RenderStyle) -> None:
    h, w = canvas.shape[:2]
    hands = [p.left_hand for p in people] + [p.right_hand for p in people]
    for hand in hands:
        px = [(int(_pixel(x, w)), int(_pixel(y, h))) for x, y, _ in hand]
        for bone, (a, b) in enumerate(HAND_BONES):
            (xa, ya), (xb, yb) = px[a], px[b]
            if min(xa, ya, xb, yb) >= 1:
                score = int(float(hand[a, 2]) * float(hand[b, 2]) * 255)
                cv2.line(canvas, (xa, ya), (xb, yb), _hand_colour(bone, score), thickness=style.hand_thickness)
        for (x, y), score in zip(px, hand[:, 2]):
            if x >= 1 and y >= 1:
                cv2.circle(canvas, (x, y), style.hand_joint_radius, (0, 0, int(float(score) * 255)), thickness=-1)


def _draw_faces(cv2, canvas: np.ndarray, people: Sequence[PoseFrame], style: RenderStyle) -> None:
    h, w = canvas.shape[:2]
    for person in people:
        for x, y, score in person.face:
            px, py = int(_pixel(x, w)), int(_pixel(y, h))
            if px >= 1 and py >= 1:
                grey = int(float(score) * 255)
                cv2.circle(canvas, (px, py), style.face_radius, (grey, grey, grey), thickness=-1)


def render_people(
    people: Sequence[PoseFrame], height: int, width: int, style: RenderStyle = DEFAULT_STYLE
) -> np.ndarray:
    """Draw several people on one control image (each part for all people, then the next part,
    as the reference does). Missing poses are skipped.

    Shapes: returns (height, width, 3) uint8 RGB.
    """
    cv2 = require("cv2", "Pose rendering")
    if int(height) != height or int(width) != width or height <= 0 or width <= 0:
        raise PoseInputError(f"render size must be positive integers, got height={height}, width={width}")
    height, width = int(height), int(width)
    people = [p for p in people if not p.missing]
    ch, cw = canvas_size(height, width, style)
    canvas = np.zeros((ch, cw, 3), np.uint8)
    if style.draw_body:
        _draw_bodies(cv2, canvas, people, style)
    if style.draw_hands:
        _draw_hands(cv2, canvas, people, style)
    if style.draw_face:
        _draw_faces(cv2, canvas, people, style)
    if (ch, cw) != (height, width):
        interp = cv2.INTER_LINEAR if style.interpolation == "linear" else cv2.INTER_AREA
        canvas = cv2.resize(canvas, (width, height), interpolation=interp)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


def render_pose(frame: PoseFrame, height: int, width: int, style: RenderStyle = DEFAULT_STYLE) -> np.ndarray:
    """The control image of one pose: a pure function of the frame and the output size.

    A missing frame renders black. Shapes: returns (height, width, 3) uint8 RGB.
    """
    return render_people([frame], height, width, style)


def overlay(image: np.ndarray, skeleton: np.ndarray, dim: float = 0.5) -> np.ndarray:
    """The image dimmed by `dim`, with the skeleton's non-black pixels pasted over it (preview).

    Shapes: image and skeleton (H, W, 3) uint8; returns (H, W, 3) uint8.
    """
    if image.shape != skeleton.shape:
        raise PoseInputError(f"overlay: image {image.shape} and skeleton {skeleton.shape} differ in shape")
    dimmed = (image.astype(np.float32) * dim).astype(np.uint8)
    return np.where(skeleton.any(axis=-1, keepdims=True), skeleton, dimmed)
