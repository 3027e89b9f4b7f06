"""The DWPose backend's pre- and post-processing, run through onnxruntime with tiny models that
have the real models' signatures (the real weights cannot be downloaded here).

The tiny detector outputs fixed raw YOLOX head values encoding known boxes; the tiny pose
model points every keypoint at the brightest spot of its input crop. So a white dot drawn in
the image must come back as the keypoint position, through letterboxing, box decoding, NMS,
the affine crop, SimCC decoding and the inverse transform.
"""

import numpy as np
import pytest

from pose.detect import make_detector
from pose.detect.dwpose import DWPoseDetector, crop_transform, decode_simcc, nms, wholebody_to_frame
from pose.errors import PoseInputError
from pose.layout import L_ANKLE, L_KNEE, L_SHOULDER, NECK, NOSE, OPENPOSE_FROM_COCO, R_ANKLE, R_KNEE, R_SHOULDER
from pose.select import PersonTracker
from tests.pose.synthetic import tiny_dwpose, tiny_yolox

W, H = 1280, 720
RATIO = 640 / W  # letterbox ratio for 1280x720 into 640x640


def _image(*dots):
    img = np.zeros((H, W, 3), np.uint8)
    for x, y in dots:
        img[y - 1:y + 2, x - 1:x + 2] = 255
    return img


def _detector(tmp_path, boxes, scores, pose_model):
    det = tiny_yolox(tmp_path / "yolox_l.onnx", [np.array(b) * RATIO for b in boxes], scores)
    return DWPoseDetector(det, pose_model, device="cpu")


def test_keypoints_land_on_the_image_feature(tmp_path, tiny_pose_model):
    detector = _detector(tmp_path, [(400, 100, 640, 620)], [0.9], tiny_pose_model)
    boxes, scores = detector.detect_boxes(_image((500, 300)))
    np.testing.assert_allclose(boxes, [(400, 100, 640, 620)], atol=1e-3)
    people = detector.detect(_image((500, 300)))
    assert len(people) == 1
    p = people[0]
    # all 133 points sit on the dot (one crop pixel = 1.35 image pixels, SimCC resolves half of it)
    for part in (p.body[[NOSE, R_SHOULDER]], p.face, p.left_hand, p.right_hand):
        err = np.abs(part[:, :2] * (W, H) - (500, 300))
        assert err.max() < 2.0, err.max()
        assert np.all(part[:, 2] > 0.85)  # sigmoid of the normalized white pixel
    assert p.body[NECK, 2] == 1.0  # both shoulders above 0.3: the neck is scored 1
    np.testing.assert_allclose(p.body[NECK, :2], (p.body[R_SHOULDER, :2] + p.body[L_SHOULDER, :2]) / 2)


def test_two_people_are_both_returned_and_the_larger_is_selected(tmp_path, tiny_pose_model):
    detector = _detector(tmp_path, [(80, 200, 300, 560), (700, 40, 1100, 700)], [0.8, 0.95], tiny_pose_model)
    image = _image((190, 380), (900, 370))
    people = detector.detect(image)
    assert len(people) == 2
    found = sorted(tuple(np.round(p.body[NOSE, :2] * (W, H))) for p in people)
    assert np.allclose(found, [(190, 380), (900, 370)], atol=2)
    chosen = PersonTracker().select(people, W, H)
    assert chosen.detected_people == 2
    assert np.allclose(chosen.body[NOSE, :2] * (W, H), (900, 370), atol=2)


def test_overlapping_boxes_are_suppressed_and_weak_ones_dropped(tmp_path, tiny_pose_model):
    boxes = [(400, 100, 640, 620), (440, 130, 680, 650), (900, 100, 1100, 600)]
    detector = _detector(tmp_path, boxes, [0.9, 0.8, 0.25], tiny_pose_model)
    found, scores = detector.detect_boxes(_image((500, 300)))
    assert len(found) == 1 and scores[0] == pytest.approx(0.9)


def test_no_person_box_means_no_person(tmp_path, tiny_pose_model):
    detector = _detector(tmp_path, [], [], tiny_pose_model)
    assert detector.detect(_image((500, 300))) == []


def test_nms_and_simcc_helpers():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.45) == [1, 2]
    sx = np.zeros((1, 2, 8))
    sy = np.zeros((1, 2, 6))
    sx[0, 0, 5], sy[0, 0, 3] = 0.7, 0.4
    locs, scores = decode_simcc(sx, sy, 2.0)
    np.testing.assert_allclose(locs[0, 0], (2.5, 1.5))
    assert scores[0, 0] == 0.4  # the smaller of the two axis maxima
    np.testing.assert_allclose(locs[0, 1], (-0.5, -0.5))  # empty response: -1 / split


def test_points_outside_the_image_are_not_found():
    """The enlarged crop lets the model put the knees of a waist-up person below the image."""
    points = np.tile([[640.0, 300.0]], (133, 1))
    scores = np.full(133, 0.9)
    for joint in (R_KNEE, L_KNEE, R_ANKLE, L_ANKLE):
        points[OPENPOSE_FROM_COCO[joint]] = (600.0, 720.0 + 40 * joint)  # below the 720-px image
    points[OPENPOSE_FROM_COCO[L_SHOULDER]] = (-3.0, 200.0)  # left of it
    points[100] = (1300.0, 10.0)  # a left-hand point right of it
    frame = wholebody_to_frame(points, scores, W, H)
    for joint in (R_KNEE, L_KNEE, R_ANKLE, L_ANKLE, L_SHOULDER, NECK):  # the neck needs both shoulders
        assert tuple(frame.body[joint]) == (0.0, 0.0, 0.0)
    assert frame.left_hand[100 - 91, 2] == 0.0 and frame.left_hand[0, 2] == pytest.approx(0.9)
    assert frame.body[R_SHOULDER, 2] == pytest.approx(0.9) and frame.body[NOSE, 2] == pytest.approx(0.9)


def test_crop_keeps_the_pose_models_aspect():
    centre, scale, matrix = crop_transform(np.array([100, 100, 200, 500]), (384, 288), 1.25)
    np.testing.assert_allclose(centre, (150, 300))
    np.testing.assert_allclose(scale, (500 * 0.75, 500))  # tall box: widened to 3:4
    np.testing.assert_allclose(matrix @ [150, 300, 1], (144, 192))


def test_bad_model_files_fail_with_the_path(tmp_path, tiny_pose_model):
    det = tiny_yolox(tmp_path / "yolox_l.onnx", [], [])
    with pytest.raises(PoseInputError, match="det_model not found: .*nope.onnx"):
        DWPoseDetector(tmp_path / "nope.onnx", tiny_pose_model)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not onnx")
    with pytest.raises(PoseInputError, match="junk.onnx is not a loadable ONNX model"):
        DWPoseDetector(det, junk)
    with pytest.raises(PoseInputError, match="expected one raw YOLOX output"):
        DWPoseDetector(tiny_pose_model, tiny_pose_model)  # paths swapped
    with pytest.raises(PoseInputError, match="expected one image input and two SimCC outputs"):
        DWPoseDetector(det, det)
    wrong_k = tiny_dwpose(tmp_path / "k17.onnx", keypoints=17)
    with pytest.raises(PoseInputError, match=r"simcc_x \(1, 133, 576\)"):
        DWPoseDetector(det, wrong_k)
    with pytest.raises(PoseInputError, match="needs det_model"):
        make_detector("dwpose")
    with pytest.raises(PoseInputError, match="device must be"):
        DWPoseDetector(det, tiny_pose_model, device="tpu")


def test_cpu_fallback_and_bad_images(tmp_path, tiny_pose_model):
    detector = make_detector("dwpose", det_model=tiny_yolox(tmp_path / "d.onnx", [], []), pose_model=tiny_pose_model)
    assert detector.providers[-1] == "CPUExecutionProvider"
    with pytest.raises(PoseInputError, match="expected dtype uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(PoseInputError, match=r"expected shape \(H, W, 3\)"):
        detector.detect(np.zeros((64, 64, 5), np.uint8))
