"""The rendering convention, checked pixel by pixel on known poses.

At an output of 2160 x 3840 the drawing canvas is the output itself (no resize), so pixels can
be checked exactly; smaller outputs are that canvas resized bilinearly.
"""

import colorsys

import cv2
import numpy as np
import pytest

from pose.align import BONES
from pose.layout import BODY_LIMBS, BODY_PALETTE, HAND_BONES, NECK, NUM_KEYPOINTS, R_SHOULDER
from pose.render import RenderStyle, canvas_size, render_people, render_pose
from pose.types import PoseFrame
from tests.pose.synthetic import body_points, full_frame, make_frame

W, H = 2160, 3840  # canvas-sized output: exact pixels


def _limb_frame(a, b, pa, pb, sa=1.0, sb=1.0):
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kp[a] = (*pa, sa)
    kp[b] = (*pb, sb)
    return PoseFrame.from_keypoints(kp)


def _rgb(canvas_colour, factor=1.0):
    """Canvas-order colour -> the RGB the final image shows."""
    return tuple(int(c * factor) for c in canvas_colour)[::-1]


def test_first_limb_is_blue_0_0_153_mid_limb():
    img = render_pose(_limb_frame(NECK, R_SHOULDER, (0.5, 0.3), (0.3, 0.3)), H, W)
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)
    assert tuple(img[1152, 864]) == (0, 0, 153)
    # joints after the 0.6 darkening, full palette colour, radius 4
    assert tuple(img[1152, 1080]) == _rgb(BODY_PALETTE[NECK])  # (0, 85, 255)
    assert tuple(img[1152, 648]) == _rgb(BODY_PALETTE[R_SHOULDER])


def test_limb_half_width_is_4_pixels_on_the_2160_canvas():
    img = render_pose(_limb_frame(NECK, R_SHOULDER, (0.5, 0.3), (0.3, 0.3)), H, W)
    column = np.flatnonzero(img[:, 864].any(axis=1))
    assert (column.min(), column.max()) == (1148, 1156)  # 2 * 4 + 1 rows


@pytest.mark.parametrize("height, width", [(1024, 576), (1920, 1080), (576, 1024)])
def test_output_is_the_canvas_resized_bilinearly(height, width):
    frame = full_frame((400, 300), 1000, 1000)
    assert canvas_size(height, width) == (int(height * 2160 / min(height, width)), int(width * 2160 / min(height, width)))
    ch, cw = canvas_size(height, width)
    expected = cv2.resize(render_pose(frame, ch, cw), (width, height), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(render_pose(frame, height, width), expected)


def test_stroke_thickness_scales_with_the_output_size():
    frame = _limb_frame(NECK, R_SHOULDER, (0.5, 0.3), (0.2, 0.3))
    widths = {}
    for height, width in ((1024, 576), (1920, 1080), (3840, 2160)):
        img = render_pose(frame, height, width)
        x = int(0.35 * width)
        widths[width] = np.count_nonzero(img[:, x].any(axis=1))
    assert widths[2160] == 9
    assert abs(widths[1080] - 9 / 2) <= 1.5
    assert abs(widths[576] - 9 * 576 / 2160) <= 1.5


def test_limb_colour_is_palette_times_score_product_then_darkened():
    img = render_pose(_limb_frame(NECK, R_SHOULDER, (0.5, 0.3), (0.3, 0.3), sa=0.5, sb=0.8), H, W)
    assert tuple(img[1152, 864]) == (0, 0, int(int(255 * 0.5 * 0.8) * 0.6))  # (0, 0, 61)
    assert tuple(img[1152, 648]) == _rgb(BODY_PALETTE[R_SHOULDER], 0.8)  # joint: colour x score


def test_low_scores_skip_limbs_and_joints():
    img = render_pose(_limb_frame(NECK, R_SHOULDER, (0.5, 0.3), (0.3, 0.3), sa=1.0, sb=0.29), H, W)
    assert not img[1152, 700:1000].any()  # no limb
    assert not img[1152, 648].any()  # no joint below 0.3
    at_threshold = render_pose(_limb_frame(NECK, R_SHOULDER, (0.5, 0.3), (0.3, 0.3), sb=0.31), H, W)
    assert at_threshold[1152, 864].any() and at_threshold[1152, 648].any()


def test_every_limb_has_its_palette_colour_in_order():
    body = body_points((1080, 1000), scale=6.0)
    frame = make_frame(body, W, H)
    img = render_pose(frame, H, W)
    for limb, (a, b) in enumerate(BODY_LIMBS):
        mid = ((body[a] + body[b]) / 2).astype(int)
        assert tuple(img[mid[1], mid[0]]) == _rgb(BODY_PALETTE[limb], 0.6), f"limb {limb} {a}-{b}"


def test_later_limbs_are_drawn_over_earlier_ones():
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kp[2], kp[3] = (0.3, 0.3, 1), (0.6, 0.5, 1)  # right upper arm, limb 2
    kp[5], kp[6] = (0.7, 0.3, 1), (0.4, 0.5, 1)  # left upper arm, limb 4: crosses it
    img = render_pose(PoseFrame.from_keypoints(kp), H, W)
    y = int(round((0.3 + 0.2 * 2 / 3) * H))  # where the two segments cross, x = 0.5
    assert tuple(img[y, W // 2]) == _rgb(BODY_PALETTE[4], 0.6)


def test_hands_bones_on_the_hue_circle_and_red_joints():
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    hand = np.zeros((21, 3), np.float32)
    hand[:, 2] = 1.0
    hand[0, :2] = (0.5, 0.5)
    for bone, (a, b) in enumerate(HAND_BONES):  # a fan: each bone its own direction
        if a == 0:
            hand[b, :2] = hand[0, :2] + 0.06 * np.array([np.cos(bone / 3), np.sin(bone / 3)])
        else:
            hand[b, :2] = hand[a, :2] + (hand[a, :2] - hand[0, :2]) * 0.9 / (1 + bone % 4)
    kp[18:39] = hand
    img = render_pose(PoseFrame.from_keypoints(kp), H, W)
    for bone, (a, b) in enumerate(HAND_BONES):
        pa, pb = hand[a, :2] * (W, H), hand[b, :2] * (W, H)
        if np.linalg.norm(pa - pb) < 30:
            continue
        mid = ((pa + pb) / 2).astype(int)
        r, g, bl = colorsys.hsv_to_rgb(bone / 20, 1.0, 1.0)
        expected = tuple(int(np.round(c * 255)) for c in (bl, g, r))  # canvas (r, g, b) shown reversed
        assert np.abs(img[mid[1], mid[0]].astype(int) - expected).max() <= 1, f"bone {bone}"
    wrist = (hand[0, :2] * (W, H)).astype(int)
    assert tuple(img[wrist[1], wrist[0]]) == (255, 0, 0)


def test_hand_hues_match_matplotlib_hsv():
    matplotlib_colors = pytest.importorskip("matplotlib.colors")  # what the reference drew with
    for bone in range(20):
        ours = np.array(colorsys.hsv_to_rgb(bone / 20, 1.0, 1.0))
        theirs = matplotlib_colors.hsv_to_rgb([bone / 20, 1.0, 1.0])
        np.testing.assert_array_equal(ours, theirs)


def test_face_points_are_grey_by_score():
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kp[60] = (0.5, 0.5, 0.6)
    img = render_pose(PoseFrame.from_keypoints(kp), H, W)
    assert tuple(img[1920, 1080]) == (153, 153, 153)
    assert img[1920, 1080 - 3:1080 + 4].any(axis=1).sum() == 7  # radius 3
    assert not img[1920, 1080 + 4].any()


def test_points_at_zero_are_not_drawn_and_missing_frames_are_black():
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kp[18:, 2] = 0.9  # hands and face "scored" but at (0, 0): the reference skips them
    assert not render_pose(PoseFrame.from_keypoints(kp), 1024, 576).any()
    assert not render_pose(PoseFrame.empty(), 1024, 576).any()


def test_render_is_pure_and_several_people_draw_together():
    a = full_frame((300, 300), 1000, 1000)
    b = full_frame((700, 300), 1000, 1000)
    before = a.keypoints.copy()
    one = render_pose(a, 1024, 576)
    assert np.array_equal(one, render_pose(a, 1024, 576)) and np.array_equal(a.keypoints, before)
    both = render_people([a, b], 1024, 576)
    assert both.any(axis=2).sum() > one.any(axis=2).sum()


def test_style_options_are_honoured_and_validated():
    frame = full_frame((500, 300), 1000, 1000)
    no_face = render_pose(frame, 1024, 576, RenderStyle(draw_face=False, draw_hands=False))
    body_only = render_pose(PoseFrame(body=frame.body, left_hand=np.zeros((21, 3)), right_hand=np.zeros((21, 3)),
                                      face=np.zeros((68, 3))), 1024, 576)
    np.testing.assert_array_equal(no_face, body_only)
    area = render_pose(frame, 1024, 576, RenderStyle(interpolation="area"))
    assert not np.array_equal(area, render_pose(frame, 1024, 576))
    with pytest.raises(ValueError, match="interpolation"):
        RenderStyle(interpolation="cubic")
    with pytest.raises(ValueError, match="positive integers"):
        render_pose(frame, 0, 576)


def test_bones_tree_covers_the_drawn_limbs():
    assert {frozenset(b) for b in BONES} == {frozenset(l) for l in BODY_LIMBS}


def test_darkening_table_matches_the_reference_arithmetic():
    from pose.render import _darken_table

    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(_darken_table(0.6), (values * 0.6).astype(np.uint8))
