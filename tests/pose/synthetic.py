"""Synthetic skeletons and tiny ONNX models with DWPose's signatures, for the pose tests."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from pose.align import BONES
from pose.layout import NECK, NUM_BODY, NUM_FACE, NUM_HAND
from pose.types import PoseFrame, PoseSequence

# (length px, angle deg) per BONES entry; angles in image coordinates (x right, y down), a
# person facing the camera (their right side on the image's left).
STANDING = (
    (40, 180), (60, 100), (55, 95),    # right shoulder, upper arm, forearm
    (40, 0), (60, 80), (55, 85),       # left
    (110, 100), (90, 92), (85, 90),    # right hip, thigh, shin
    (110, 80), (90, 88), (85, 90),     # left
    (45, -90), (12, -135), (16, 180),  # neck-nose, nose-right eye, right eye-ear
    (12, -45), (16, 0),                # nose-left eye, left eye-ear
)


def body_points(neck_xy, bones=STANDING, scale: float = 1.0) -> np.ndarray:
    """Joint pixel positions (18, 2) of a skeleton built from (length, angle) per bone."""
    pts = np.full((NUM_BODY, 2), np.nan)
    pts[NECK] = neck_xy
    for (parent, child), (length, angle) in zip(BONES, bones):
        a = np.deg2rad(angle)
        pts[child] = pts[parent] + scale * length * np.array([np.cos(a), np.sin(a)])
    return pts


def hand_points(wrist_xy, angle_deg: float, palm: float) -> np.ndarray:
    """A flat open hand (21, 2): five fingers fanned around the forearm direction."""
    pts = [np.asarray(wrist_xy, float)]
    base = np.deg2rad(angle_deg)
    for finger in range(5):
        a = base + np.deg2rad(-40 + 20 * finger)
        d = np.array([np.cos(a), np.sin(a)])
        for joint in range(1, 5):
            pts.append(pts[0] + d * palm * (0.6 + 0.35 * joint))
    return np.array(pts)


def face_points(nose_xy, size: float) -> np.ndarray:
    """68 points on an ellipse around the nose, eyes (36-47) on two small circles."""
    pts = np.zeros((NUM_FACE, 2))
    t = np.linspace(0, 2 * np.pi, NUM_FACE, endpoint=False)
    pts[:] = np.asarray(nose_xy) + size * np.stack([0.8 * np.cos(t), np.sin(t) + 0.2], -1)
    for k, centre in ((slice(36, 42), (-0.35, -0.3)), (slice(42, 48), (0.35, -0.3))):
        s = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        pts[k] = np.asarray(nose_xy) + size * (np.array(centre) + 0.08 * np.stack([np.cos(s), np.sin(s)], -1))
    return pts


def make_frame(body_px, width, height, *, hands=None, face=None, score: float = 1.0, **flags) -> PoseFrame:
    """PoseFrame normalized to width x height from pixel positions (hands: (left, right))."""
    def norm(px, n):
        out = np.zeros((n, 3), np.float32)
        if px is not None:
            out[:, 0] = px[:, 0] / width
            out[:, 1] = px[:, 1] / height
            out[:, 2] = score
        return out

    left, right = hands if hands is not None else (None, None)
    return PoseFrame(body=norm(body_px, NUM_BODY), left_hand=norm(left, NUM_HAND),
                     right_hand=norm(right, NUM_HAND), face=norm(face, NUM_FACE), **flags)


def full_frame(neck_xy, width, height, bones=STANDING, scale=1.0, palm=14.0, face_size=22.0, **kw) -> PoseFrame:
    body = body_points(neck_xy, bones, scale)
    hands = (hand_points(body[7], bones[5][1], palm * scale), hand_points(body[4], bones[2][1], palm * scale))
    return make_frame(body, width, height, hands=hands, face=face_points(body[0], face_size * scale), **kw)


def sequence(frames, width, height, fps=Fraction(15)) -> PoseSequence:
    return PoseSequence(frames=tuple(frames), width=width, height=height, fps=fps)


# ----------------------------------------------------------------------------- tiny ONNX models

def _save(model, path):
    import onnx

    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_yolox(path, boxes_640, scores, size=640, num_classes=80):
    """A YOLOX-signature model (input `images` 1x3x640x640, output (1, 8400, 85) raw head
    values) whose output places the given boxes (xyxy in letterboxed 640-px input space) at
    anchors, with objectness 1 and person probability `score`, plus a term that depends on
    the input (a 0-weighted image mean) so the graph really reads its input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    strides = (8, 16, 32)
    n = sum((size // s) ** 2 for s in strides)
    raw = np.zeros((1, n, 5 + num_classes), np.float32)
    raw[0, :, 2:4] = -10.0  # tiny boxes everywhere else, objectness 0
    offsets, start = [], 0
    for s in strides:
        offsets.append((s, start, size // s))
        start += (size // s) ** 2
    for k, (box, score) in enumerate(zip(boxes_640, scores)):
        s, base, g = offsets[2]  # stride-32 anchors
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        gx, gy = int(cx // s), int(cy // s)
        idx = base + gy * g + gx
        if raw[0, idx, 4]:
            raise ValueError(f"boxes {k} and an earlier one share a stride-32 anchor; move one")
        raw[0, idx, 0] = cx / s - gx
        raw[0, idx, 1] = cy / s - gy
        raw[0, idx, 2] = np.log((box[2] - box[0]) / s)
        raw[0, idx, 3] = np.log((box[3] - box[1]) / s)
        raw[0, idx, 4] = 1.0
        raw[0, idx, 5] = score
    const = numpy_helper.from_array(raw, "head")
    zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["head", "z"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolox",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n, 5 + num_classes])],
        initializer=[const, zero],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def tiny_dwpose(path, height=384, width=288, keypoints=133, split=2):
    """A DW-LL-signature model (input 1x3x384x288, outputs simcc_x (1, 133, 576) and simcc_y
    (1, 133, 768)) that points every keypoint at the brightest spot of its input crop: SimCC x
    is the crop's first channel maxed over rows, upsampled 2x; y the same over columns. Values
    are squashed into (0, 1) with a sigmoid so they read as confidences."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([1, 1, height, width], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 1, 1, split], np.float32), "scale_x"),
        numpy_helper.from_array(np.array([1, 1, split, 1], np.float32), "scale_y"),
        numpy_helper.from_array(np.array([1, keypoints, width * split], np.int64), "shape_x"),
        numpy_helper.from_array(np.array([1, keypoints, height * split], np.int64), "shape_y"),
    ]
    nodes = [
        helper.make_node("Slice", ["input", "starts", "ends"], ["c0"]),           # (1,1,h,w)
        helper.make_node("ReduceMax", ["c0"], ["colmax"], axes=[2], keepdims=1),   # (1,1,1,w)
        helper.make_node("ReduceMax", ["c0"], ["rowmax"], axes=[3], keepdims=1),   # (1,1,h,1)
        helper.make_node("Resize", ["colmax", "", "scale_x"], ["ux"], mode="nearest"),
        helper.make_node("Resize", ["rowmax", "", "scale_y"], ["uy"], mode="nearest"),
        helper.make_node("Sigmoid", ["ux"], ["sx"]),
        helper.make_node("Sigmoid", ["uy"], ["sy"]),
        helper.make_node("Reshape", ["sx", "shape_x_one"], ["rx"]),
        helper.make_node("Reshape", ["sy", "shape_y_one"], ["ry"]),
        helper.make_node("Expand", ["rx", "shape_x"], ["simcc_x"]),
        helper.make_node("Expand", ["ry", "shape_y"], ["simcc_y"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([1, 1, width * split], np.int64), "shape_x_one"),
        numpy_helper.from_array(np.array([1, 1, height * split], np.int64), "shape_y_one"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_dwpose",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])],
        [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, keypoints, width * split]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, keypoints, height * split]),
        ],
        initializer=inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
