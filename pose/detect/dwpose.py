"""DWPose backend on onnxruntime: YOLOX-l person boxes, then DW-LL whole-body keypoints.

The user supplies the two ONNX files distributed with DWPose: `yolox_l.onnx` (input `images`
1x3x640x640; output (1, 8400, 85): raw YOLOX head outputs per anchor, box centre offset and log
size per stride-8/16/32 grid cell, then objectness and 80 class probabilities, no decoding or
NMS inside the graph) and `dw-ll_ucoco_384.onnx` (input 1x3x384x288, outputs SimCC
distributions `simcc_x` (1, 133, 576) and `simcc_y` (1, 133, 768), two bins per input pixel).

Pre- and post-processing follow the reference pipeline's DWPose code as facts: letterbox to
640 (top-left aligned, padding 114, no normalization, the RGB frame as is), grid decoding,
class-aware NMS (IoU 0.45, score 0.1) keeping persons scoring above 0.3; each box is enlarged
1.25x, widened to the pose model's 3:4 aspect, warped (bilinear) to 288x384 and normalized with
the ImageNet mean and std; keypoints are the SimCC argmax over 2, scores the smaller of the two
axis maxima. The neck is the mean of the shoulders, scored 1 when both shoulders score above
0.3, else 0. Feet (6 points) are dropped: the OpenPose-18 body has none. Points outside the
image (the enlarged crop lets the model place them there) are not found: score 0.

Written here rather than taken from rtmlib: rtmlib requires `opencv-python`, which would
install a second copy of cv2 over mediapipe's `opencv-contrib-python`, and it differs from the
reference in ways that change the rendered control images (neck score = the smaller shoulder
score instead of 0/1, keypoint score = the mean instead of the minimum of the two axis maxima,
detection threshold 0.7).

Deviation from the reference, on purpose: when no person box is found the reference runs the
pose model on the whole image anyway; here the result is "no person" (an empty list), so the
frame is handled as missing (filled when the gap is short) instead of holding a guessed pose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose.detect import with_neck
from pose.errors import PoseInputError, require
from pose.geometry import inside_picture
from pose.images import as_rgb
from pose.layout import (
    NUM_BODY,
    OPENPOSE_FROM_COCO,
    WHOLEBODY_FACE,
    WHOLEBODY_LEFT_HAND,
    WHOLEBODY_NUM,
    WHOLEBODY_RIGHT_HAND,
)
from pose.types import PoseFrame

DET_INPUT_SIZE = (640, 640)  # (height, width), used when the model's input size is dynamic
DET_STRIDES = (8, 16, 32)
LETTERBOX_PAD = 114
PERSON_CLASS = 0
POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)


def _static_dim(value) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize to fit (height, width) keeping the aspect ratio, top-left aligned, padded with 114.

    Shapes: (H, W, 3) uint8 -> (1, 3, height, width) float32, and the resize ratio.
    """
    cv2 = require("cv2", "The dwpose backend")
    h, w = image.shape[:2]
    ratio = min(size[0] / h, size[1] / w)
    nw, nh = int(w * ratio), int(h * ratio)
    padded = np.full((size[0], size[1], 3), LETTERBOX_PAD, np.uint8)
    padded[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def decode_yolox(raw: np.ndarray, size: tuple[int, int], strides=DET_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Raw YOLOX head outputs -> boxes (N, 4) xyxy in input pixels, class scores (N, C).

    Shapes: raw (1, N, 5 + C) with N = sum over strides of (height/s) * (width/s).
    """
    grids, stride_col = [], []
    for s in strides:
        gh, gw = size[0] // s, size[1] // s
        xs, ys = np.meshgrid(np.arange(gw), np.arange(gh))
        grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
        stride_col.append(np.full((gh * gw, 1), s))
    grid = np.concatenate(grids).astype(np.float64)
    stride = np.concatenate(stride_col).astype(np.float64)
    pred = raw[0].astype(np.float64)
    centre = (pred[:, :2] + grid) * stride
    wh = np.exp(pred[:, 2:4]) * stride
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
    return boxes, pred[:, 4:5] * pred[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression, highest score first (areas counted pixel-inclusive,
    +1, as the reference's YOLOX code does). Returns kept indices in score order."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(scores)[::-1]
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = iw * ih
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return keep


def crop_transform(box: np.ndarray, size: tuple[int, int], padding: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and (w, h) scale of a padded box widened to the crop's aspect, and the 2x3 affine
    map from image to crop pixels (uniform scale, no rotation). size: crop (height, width)."""
    ch, cw = size
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float64)
    bw, bh = (box[2] - box[0]) * padding, (box[3] - box[1]) * padding
    aspect = cw / ch
    scale = np.array([bw, bw / aspect] if bw > bh * aspect else [bh * aspect, bh], np.float64)
    s = cw / scale[0]
    matrix = np.array([[s, 0.0, cw / 2 - s * centre[0]], [0.0, s, ch / 2 - s * centre[1]]], np.float64)
    return centre, scale, matrix


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """SimCC argmax decoding. Shapes: (N, K, Wx), (N, K, Wy) -> locations (N, K, 2) in crop
    pixels, scores (N, K): the smaller of the two axis maxima; locations of scores <= 0 are -1."""
    locs = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], -1).astype(np.float64)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float64)
    locs[scores <= 0] = -1
    return locs / split_ratio, scores


def wholebody_to_frame(points: np.ndarray, scores: np.ndarray, width: int, height: int) -> PoseFrame:
    """133 COCO-WholeBody points in pixels -> a PoseFrame normalized to width x height.

    Negative scores (empty SimCC responses) become 0, and so do points outside the image.
    """
    xy = points / np.array([width, height], np.float64)
    sc = np.clip(scores, 0.0, None)
    wb = inside_picture(np.concatenate([xy, sc[:, None]], axis=1))
    body = np.zeros((NUM_BODY, 3), np.float64)
    for joint, coco in OPENPOSE_FROM_COCO.items():
        body[joint] = wb[coco]
    return PoseFrame(
        body=with_neck(body),
        left_hand=wb[WHOLEBODY_LEFT_HAND],
        right_hand=wb[WHOLEBODY_RIGHT_HAND],
        face=wb[WHOLEBODY_FACE],
    )


class DWPoseDetector:
    """DWPose as a `PoseDetector`: every person the YOLOX detector finds.

    det_model, pose_model: paths of `yolox_l.onnx` and `dw-ll_ucoco_384.onnx` (or models with the
    same signatures). device: "auto" (CUDA when onnxruntime has it, else CPU), "cpu" or "cuda".
    candidate_threshold, nms_iou, person_threshold: detection score threshold before NMS, NMS IoU,
    and the final person score threshold (reference: 0.1, 0.45, 0.3).
    box_padding: enlargement of a person box before cropping (1.25).
    """

    name = "dwpose"

    def __init__(
        self,
        det_model: str | Path,
        pose_model: str | Path,
        device: str = "auto",
        candidate_threshold: float = 0.1,
        nms_iou: float = 0.45,
        person_threshold: float = 0.3,
        box_padding: float = 1.25,
    ) -> None:
        ort = require("onnxruntime", "The dwpose backend")
        require("cv2", "The dwpose backend")
        if device not in ("auto", "cpu", "cuda"):
            raise PoseInputError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise PoseInputError(
                f"device='cuda' but onnxruntime has no CUDA provider (available: {available}); "
                "install onnxruntime-gpu or use device='cpu'"
            )
        use_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        for name, v in (("candidate_threshold", candidate_threshold), ("nms_iou", nms_iou),
                        ("person_threshold", person_threshold)):
            if not 0.0 <= v <= 1.0:
                raise PoseInputError(f"{name} must be in [0, 1], got {v}")
        if not box_padding > 0:
            raise PoseInputError(f"box_padding must be positive, got {box_padding}")
        self.candidate_threshold = candidate_threshold
        self.nms_iou = nms_iou
        self.person_threshold = person_threshold
        self.box_padding = box_padding
        self._det = self._session(ort, det_model, "det_model")
        self._pose = self._session(ort, pose_model, "pose_model")
        self._check_detector(det_model)
        self._check_pose_model(pose_model)

    def _session(self, ort, path, what: str):
        path = Path(path)
        if not path.is_file():
            raise PoseInputError(f"{what} not found: {path}")
        try:
            return ort.InferenceSession(str(path), providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise PoseInputError(f"{what} {path} is not a loadable ONNX model: {exc}") from exc

    def _check_detector(self, path) -> None:
        inputs, outputs = self._det.get_inputs(), self._det.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise PoseInputError(f"det_model {path}: expected one 4-D image input (YOLOX 'images' 1x3x640x640)")
        h, w = (_static_dim(d) for d in inputs[0].shape[2:])
        self.det_size = (h, w) if h and w else DET_INPUT_SIZE
        expected_anchors = sum((self.det_size[0] // s) * (self.det_size[1] // s) for s in DET_STRIDES)
        shape = outputs[0].shape
        last = _static_dim(shape[-1]) if len(shape) == 3 else None
        anchors = _static_dim(shape[1]) if len(shape) == 3 else None
        if len(outputs) != 1 or last is None or last < 6 or anchors not in (None, expected_anchors):
            raise PoseInputError(
                f"det_model {path}: expected one raw YOLOX output (1, {expected_anchors}, 85), got "
                f"{[o.shape for o in outputs]}; models with decoding/NMS inside are not supported"
            )
        self._det_input = inputs[0].name

    def _check_pose_model(self, path) -> None:
        inputs, outputs = self._pose.get_inputs(), self._pose.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) != 2:
            raise PoseInputError(
                f"pose_model {path}: expected one image input and two SimCC outputs (simcc_x, simcc_y)"
            )
        h, w = (_static_dim(d) for d in inputs[0].shape[2:])
        if not (h and w):
            raise PoseInputError(f"pose_model {path}: the input size must be static (1x3x384x288)")
        self.pose_size = (h, w)
        by_name = {o.name: o for o in outputs}
        ox, oy = (by_name["simcc_x"], by_name["simcc_y"]) if {"simcc_x", "simcc_y"} <= set(by_name) else outputs
        kx, bx = (_static_dim(d) for d in ox.shape[1:])
        ky, by = (_static_dim(d) for d in oy.shape[1:])
        if kx != WHOLEBODY_NUM or ky != WHOLEBODY_NUM or not bx or not by or bx / w != by / h:
            raise PoseInputError(
                f"pose_model {path}: expected simcc_x (1, 133, {2 * w}) and simcc_y (1, 133, {2 * h}), "
                f"got {ox.shape} and {oy.shape}"
            )
        self.simcc_split = bx / w
        self._pose_input = inputs[0].name
        self._pose_outputs = [ox.name, oy.name]
        self._pose_batch = _static_dim(inputs[0].shape[0])

    def detect_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes (M, 4) xyxy in image pixels and their scores (M,), best first."""
        image = as_rgb(image)
        tensor, ratio = letterbox(image, self.det_size)
        raw = self._det.run(None, {self._det_input: tensor})[0]
        boxes, class_scores = decode_yolox(raw, self.det_size)
        boxes /= ratio
        person = class_scores[:, PERSON_CLASS]
        candidates = np.flatnonzero(person > self.candidate_threshold)
        keep = candidates[nms(boxes[candidates], person[candidates], self.nms_iou)]
        keep = keep[person[keep] > self.person_threshold]
        return boxes[keep], person[keep]

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole-body keypoints for given boxes. Shapes: (M, 133, 2) pixels, (M, 133) scores."""
        cv2 = require("cv2", "The dwpose backend")
        image = as_rgb(image)
        ch, cw = self.pose_size
        crops, transforms = [], []
        for box in boxes:
            centre, scale, matrix = crop_transform(np.asarray(box, np.float64), self.pose_size, self.box_padding)
            crop = cv2.warpAffine(image, matrix, (cw, ch), flags=cv2.INTER_LINEAR).astype(np.float32)
            crops.append(((crop - POSE_MEAN) / POSE_STD).transpose(2, 0, 1))
            transforms.append((centre, scale))
        if not crops:
            return np.zeros((0, WHOLEBODY_NUM, 2)), np.zeros((0, WHOLEBODY_NUM))
        batch = np.stack(crops).astype(np.float32)
        if self._pose_batch == 1:
            outs = [self._pose.run(self._pose_outputs, {self._pose_input: b[None]}) for b in batch]
            simcc_x = np.concatenate([o[0] for o in outs])
            simcc_y = np.concatenate([o[1] for o in outs])
        else:
            simcc_x, simcc_y = self._pose.run(self._pose_outputs, {self._pose_input: batch})
        locs, scores = decode_simcc(simcc_x, simcc_y, self.simcc_split)
        points = np.empty_like(locs)
        for i, (centre, scale) in enumerate(transforms):
            points[i] = locs[i] / np.array([cw, ch]) * scale + centre - scale / 2
        return points, scores

    def detect(self, image: np.ndarray) -> list[PoseFrame]:
        image = as_rgb(image)
        boxes, _ = self.detect_boxes(image)
        points, scores = self.estimate(image, boxes)
        h, w = image.shape[:2]
        return [wholebody_to_frame(p, s, w, h) for p, s in zip(points, scores)]

    def close(self) -> None:
        self._det = None
        self._pose = None

    def __enter__(self) -> DWPoseDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
