"""Alignment: a driving body scaled and shifted relative to the reference lands on it; per-bone
retargeting keeps the reference's bone lengths while following the driving angles."""

import numpy as np
import pytest

from pose.align import BONES, align_linear, align_poses, fit_linear, plan_retarget, retarget, RetargetConfig
from pose.errors import NoPersonError, PoseInputError
from pose.layout import BODY_SLICE, L_ANKLE, L_HIP, L_KNEE, L_WRIST, NECK, R_ANKLE, R_HIP, R_KNEE, R_WRIST
from pose.types import PoseFrame
from tests.pose.synthetic import STANDING, full_frame, sequence

OUT_W, OUT_H = 576, 1024  # output frame (the cropped reference)
DRV_W, DRV_H = 1920, 1080  # landscape driving clip


def _reference(scale=3.0, bones=STANDING, neck=(288, 260)):
    return full_frame(neck, OUT_W, OUT_H, bones=bones, scale=scale)


def _px(frame: PoseFrame, w, h):
    return frame.keypoints[:, :2] * (w, h)


def _bone_lengths(frame, w, h):
    p = _px(frame, w, h)
    return np.array([np.linalg.norm(p[c] - p[a]) for a, c in BONES])


def _waving(n, scale, neck0, drift=(0.0, 0.0), bones=STANDING):
    """Driving frames: the standing body at `scale`, arms and a leg swinging (2-D rotations, so
    bone lengths are constant), the neck drifting by `drift` pixels per frame."""
    frames = []
    for t in range(n):
        angles = [list(b) for b in bones]
        angles[1][1] += 50 * np.sin(t / 3)  # right upper arm
        angles[2][1] += 70 * np.sin(t / 2)  # right forearm
        angles[4][1] -= 40 * np.sin(t / 4)  # left upper arm
        angles[7][1] += 25 * np.sin(t / 5)  # right thigh
        neck = np.array(neck0) + t * np.array(drift)
        frames.append(full_frame(neck, DRV_W, DRV_H, bones=[tuple(a) for a in angles], scale=scale))
    return sequence(frames, DRV_W, DRV_H)


@pytest.mark.parametrize("method", ["retarget", "linear"])
def test_scaled_and_shifted_driving_body_lands_on_the_reference(method):
    ref = _reference(scale=3.0)
    # the same body, 2.2x smaller in pixels, elsewhere in a landscape frame, standing still
    drive = sequence([full_frame((1300, 300), DRV_W, DRV_H, scale=3.0 / 2.2)] * 5, DRV_W, DRV_H)
    out = align_poses(drive, ref, width=OUT_W, height=OUT_H, method=method)
    assert (out.width, out.height) == (OUT_W, OUT_H)
    err = np.linalg.norm(_px(out[2], OUT_W, OUT_H)[BODY_SLICE] - _px(ref, OUT_W, OUT_H)[BODY_SLICE], axis=1)
    assert err.max() < 0.5, err  # pixels in the 576 x 1024 output
    hands_err = np.abs(_px(out[2], OUT_W, OUT_H)[18:60] - _px(ref, OUT_W, OUT_H)[18:60]).max()
    assert hands_err < 0.5


def test_retarget_keeps_reference_bone_lengths_within_one_percent():
    # reference proportions differ from the driving person's: long legs, short arms
    ref_bones = [list(b) for b in STANDING]
    for i in (7, 8, 10, 11):
        ref_bones[i][0] *= 1.3
    for i in (1, 2, 4, 5):
        ref_bones[i][0] *= 0.8
    ref = _reference(scale=2.5, bones=[tuple(b) for b in ref_bones], neck=(288, 180))  # feet inside the frame
    drive = _waving(40, scale=1.4, neck0=(900, 250), drift=(6.0, 1.0))
    out = retarget(drive, ref, width=OUT_W, height=OUT_H)
    ref_len = _bone_lengths(ref, OUT_W, OUT_H)
    worst = max(np.abs(_bone_lengths(f, OUT_W, OUT_H) / ref_len - 1).max() for f in out)
    assert worst < 0.01, worst
    # ...while following the driving bone directions
    for f_out, f_drv in zip(out, drive):
        po, pd = _px(f_out, OUT_W, OUT_H), _px(f_drv, DRV_W, DRV_H)
        for a, c in BONES:
            vo, vd = po[c] - po[a], pd[c] - pd[a]
            cos = vo @ vd / (np.linalg.norm(vo) * np.linalg.norm(vd))
            assert cos > 0.9999
    # root motion: the neck moves like the driving neck, scaled by the body ratio
    plan = plan_retarget(drive, ref, width=OUT_W, height=OUT_H)
    moved = _px(out[-1], OUT_W, OUT_H)[NECK] - _px(out[0], OUT_W, OUT_H)[NECK]
    np.testing.assert_allclose(moved, plan.body_ratio * 39 * np.array([6.0, 1.0]), rtol=1e-4)
    np.testing.assert_allclose(_px(out[0], OUT_W, OUT_H)[NECK], _px(ref, OUT_W, OUT_H)[NECK], atol=1e-3)


def test_linear_alignment_distorts_proportions_that_retargeting_keeps():
    ref_bones = [list(b) for b in STANDING]
    for i in (7, 8, 10, 11):
        ref_bones[i][0] *= 1.3
    ref = _reference(scale=2.5, bones=[tuple(b) for b in ref_bones], neck=(288, 180))  # feet inside the frame
    drive = _waving(10, scale=1.4, neck0=(900, 250))
    ref_len = _bone_lengths(ref, OUT_W, OUT_H)
    lin = align_linear(drive, ref, width=OUT_W, height=OUT_H)
    ret = retarget(drive, ref, width=OUT_W, height=OUT_H)
    leg = [7, 8, 10, 11]
    lin_err = np.abs(_bone_lengths(lin[0], OUT_W, OUT_H)[leg] / ref_len[leg] - 1).max()
    ret_err = np.abs(_bone_lengths(ret[0], OUT_W, OUT_H)[leg] / ref_len[leg] - 1).max()
    assert ret_err < 0.01 < 0.1 < lin_err


def test_linear_fit_matches_the_reference_formula():
    ref = _reference()
    drive = _waving(6, scale=1.0, neck0=(800, 300))
    fit = fit_linear(drive, ref, width=OUT_W, height=OUT_H)
    assert fit.a_x == pytest.approx(fit.a_y * (DRV_W * OUT_H) / (DRV_H * OUT_W))
    assert fit.frames_used == 6


def test_linear_fit_uses_only_frames_with_exactly_one_person():
    ref = _reference()
    good = full_frame((800, 300), DRV_W, DRV_H)
    crowd = full_frame((200, 900), DRV_W, DRV_H, detected_people=2)
    only_good = fit_linear(sequence([good] * 3, DRV_W, DRV_H), ref, width=OUT_W, height=OUT_H)
    mixed = fit_linear(sequence([good, crowd, good, good], DRV_W, DRV_H), ref, width=OUT_W, height=OUT_H)
    assert mixed.frames_used == 3 and mixed.a_y == pytest.approx(only_good.a_y)
    with pytest.raises(NoPersonError, match="exactly one detected person"):
        fit_linear(sequence([crowd] * 2, DRV_W, DRV_H), ref, width=OUT_W, height=OUT_H)


def test_waist_up_reference_gets_legs_at_the_body_ratio():
    full = _reference(scale=3.0)
    kp = full.keypoints.copy()
    kp[[9, 10, 12, 13], 2] = 0.0  # knees and ankles below the frame: not found
    ref = PoseFrame.from_keypoints(kp)
    drive = sequence([full_frame((960, 300), DRV_W, DRV_H, scale=1.5)] * 3, DRV_W, DRV_H)
    out = retarget(drive, ref, width=OUT_W, height=OUT_H)
    np.testing.assert_allclose(_bone_lengths(out[0], OUT_W, OUT_H), _bone_lengths(full, OUT_W, OUT_H), rtol=1e-3)


def test_reference_joints_outside_the_frame_count_as_not_shown():
    """A detector's confident guesses below a waist-up reference (here legs 1.6x too long, at
    score 0.85) must not set the leg ratios: the legs get the body ratio, as documented."""
    ref_bones = [list(b) for b in STANDING]
    for i in (7, 8, 10, 11):  # thighs and shins
        ref_bones[i][0] *= 1.6
    ref = full_frame((288, 600), OUT_W, OUT_H, bones=[tuple(b) for b in ref_bones], scale=3.0, score=0.85)
    assert (ref.body[[R_KNEE, L_KNEE, R_ANKLE, L_ANKLE], 1] > 1).all()  # below the frame
    drive = sequence([full_frame((960, 300), DRV_W, DRV_H, scale=1.5)] * 3, DRV_W, DRV_H)
    plan = plan_retarget(drive, ref, width=OUT_W, height=OUT_H)
    legs = [BONES.index(b) for b in ((R_HIP, R_KNEE), (R_KNEE, R_ANKLE), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE))]
    np.testing.assert_allclose([plan.bone_ratios[i] for i in legs], plan.body_ratio)
    assert plan.body_ratio == pytest.approx(2.0)  # scale 3.0 over 1.5
    out = align_poses(drive, ref, width=OUT_W, height=OUT_H)
    ratio = _bone_lengths(out[0], OUT_W, OUT_H)[legs] / _bone_lengths(drive[0], DRV_W, DRV_H)[legs]
    np.testing.assert_allclose(ratio, plan.body_ratio, rtol=1e-5)


def test_missing_and_absent_points_stay_missing():
    ref = _reference()
    frames = list(_waving(4, 1.0, (900, 300)).frames)
    frames[2] = PoseFrame.empty()
    kp = frames[1].keypoints.copy()
    kp[R_WRIST] = 0.0
    kp[39:60] = 0.0  # right hand not found
    frames[1] = PoseFrame.from_keypoints(kp)
    for method in ("retarget", "linear", "none"):
        out = align_poses(sequence(frames, DRV_W, DRV_H), ref, width=OUT_W, height=OUT_H, method=method)
        assert out[2].missing and not out[2].keypoints.any()
        assert not out[1].keypoints[39:60].any() and not out[1].keypoints[R_WRIST].any()
        assert out[1].keypoints[L_WRIST, 2] == 1.0


def test_none_maps_the_driving_frame_like_the_reference_image():
    drive = sequence([full_frame((960, 540), DRV_W, DRV_H)], DRV_W, DRV_H)
    out = align_poses(drive, _reference(), width=OUT_W, height=OUT_H, method="none")
    # 1920x1080 covering 576x1024: scaled to 1820x1024, centre crop starts at x=622
    np.testing.assert_allclose(_px(out[0], OUT_W, OUT_H)[NECK], (960 * 1024 / 1080 - 622, 540 * 1024 / 1080), atol=0.6)


def test_alignment_errors_name_the_problem():
    drive = _waving(3, 1.0, (900, 300))
    with pytest.raises(NoPersonError, match="reference pose has no body joint"):
        retarget(drive, PoseFrame.empty(), width=OUT_W, height=OUT_H)
    with pytest.raises(NoPersonError, match="no person in any of the 2 driving frames"):
        retarget(sequence([PoseFrame.empty()] * 2, DRV_W, DRV_H), _reference(), width=OUT_W, height=OUT_H)
    with pytest.raises(PoseInputError, match="unknown alignment method 'affine'"):
        align_poses(drive, _reference(), width=OUT_W, height=OUT_H, method="affine")
    with pytest.raises(PoseInputError, match="anchor_frame=7"):
        retarget(drive, _reference(), width=OUT_W, height=OUT_H, config=RetargetConfig(anchor_frame=7))
    with pytest.raises(PoseInputError, match="retarget_config applies"):
        align_poses(drive, _reference(), width=OUT_W, height=OUT_H, method="linear",
                    retarget_config=RetargetConfig(symmetric=False))


def test_foreshortened_driving_bones_stay_proportionally_short():
    ref = _reference(scale=3.0)
    frames = []
    for t in range(20):
        bones = [list(b) for b in STANDING]
        if t >= 15:
            bones[2][0] *= 0.5  # forearm pointing at the camera: half its length in 2-D
        frames.append(full_frame((900, 300), DRV_W, DRV_H, bones=[tuple(b) for b in bones], scale=1.5))
    out = retarget(sequence(frames, DRV_W, DRV_H), ref, width=OUT_W, height=OUT_H)
    ref_forearm = _bone_lengths(ref, OUT_W, OUT_H)[2]
    assert _bone_lengths(out[0], OUT_W, OUT_H)[2] == pytest.approx(ref_forearm, rel=1e-3)
    assert _bone_lengths(out[19], OUT_W, OUT_H)[2] == pytest.approx(ref_forearm * 0.5, rel=1e-3)


def test_symmetric_lengths_use_the_longer_side():
    bones = [list(b) for b in STANDING]
    bones[1][0] *= 0.7  # the reference photo's right upper arm is foreshortened
    ref = _reference(scale=3.0, bones=[tuple(b) for b in bones])
    drive = sequence([full_frame((900, 300), DRV_W, DRV_H, scale=1.5)] * 3, DRV_W, DRV_H)
    sym = retarget(drive, ref, width=OUT_W, height=OUT_H)
    asym = retarget(drive, ref, width=OUT_W, height=OUT_H, config=RetargetConfig(symmetric=False))
    ref_len = _bone_lengths(ref, OUT_W, OUT_H)
    assert _bone_lengths(sym[0], OUT_W, OUT_H)[1] == pytest.approx(ref_len[4], rel=1e-3)  # left's length
    assert _bone_lengths(asym[0], OUT_W, OUT_H)[1] == pytest.approx(ref_len[1], rel=1e-3)


@pytest.mark.parametrize("root_motion, expected_scale", [("body", None), ("frame", (OUT_W / DRV_W, OUT_H / DRV_H)),
                                                          ("none", (0.0, 0.0))])
def test_root_motion_modes(root_motion, expected_scale):
    ref = _reference(scale=3.0)
    drive = _waving(10, scale=1.5, neck0=(600, 300), drift=(20.0, 4.0))
    config = RetargetConfig(root_motion=root_motion)
    out = retarget(drive, ref, width=OUT_W, height=OUT_H, config=config)
    plan = plan_retarget(drive, ref, width=OUT_W, height=OUT_H, config=config)
    scale = np.array(expected_scale if expected_scale is not None else (plan.body_ratio, plan.body_ratio))
    moved = _px(out[-1], OUT_W, OUT_H)[NECK] - _px(out[0], OUT_W, OUT_H)[NECK]
    np.testing.assert_allclose(moved, scale * 9 * np.array([20.0, 4.0]), atol=1e-3)
    ref_len = _bone_lengths(ref, OUT_W, OUT_H)
    assert np.abs(_bone_lengths(out[-1], OUT_W, OUT_H) / ref_len - 1).max() < 0.01
    with pytest.raises(PoseInputError, match="root_motion must be one of"):
        RetargetConfig(root_motion="teleport")


def test_hands_without_a_reference_hand_scale_like_the_forearm():
    full = _reference(scale=3.0)
    kp = full.keypoints.copy()
    kp[18:60] = 0.0  # the reference photo shows no hands
    ref = PoseFrame.from_keypoints(kp)
    drive = sequence([full_frame((960, 300), DRV_W, DRV_H, scale=1.5, palm=10.0)] * 3, DRV_W, DRV_H)
    plan = plan_retarget(drive, ref, width=OUT_W, height=OUT_H)
    assert plan.left_hand_ratio == pytest.approx(plan.bone_ratios[5]) and plan.bone_ratios[5] == pytest.approx(2.0)
    out = retarget(drive, ref, width=OUT_W, height=OUT_H)
    hand_out, hand_drv = _px(out[0], OUT_W, OUT_H)[18:39], _px(drive[0], DRV_W, DRV_H)[18:39]
    np.testing.assert_allclose(hand_out - hand_out[0], (hand_drv - hand_drv[0]) * 2.0, atol=1e-3)
    np.testing.assert_allclose(hand_out[0], _px(out[0], OUT_W, OUT_H)[L_WRIST], atol=1e-3)  # on the wrist
