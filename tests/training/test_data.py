"""Examples are drawn and prepared as the official data loader makes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controlnext_video.training import (
    ArrayClip,
    ClipSource,
    HandBox,
    draw_example,
    hand_mask,
    load_example,
    random_crop_box,
    sample_frames,
)
from controlnext_video.training.data import CropBox, FrameSample


def numbered_clip(length: int = 30, height: int = 48, width: int = 40, hands=None) -> ArrayClip:
    """Frame i is filled with the value i (pose: 255 - i), so every read can be traced back."""
    frames = np.broadcast_to(np.arange(length, dtype=np.uint8)[:, None, None, None], (length, height, width, 3))
    return ArrayClip(frames.copy(), (255 - frames).copy(), hands)


def test_frames_at_an_interval_and_a_reference_from_the_whole_clip():
    rng = np.random.default_rng(0)
    starts, references = set(), set()
    for _ in range(2000):
        sample = sample_frames(30, rng, sample_n_frames=4, interval=3)
        assert sample.interval == 3
        assert np.diff(sample.frame_indices).tolist() == [3, 3, 3]
        starts.add(sample.frame_indices[0])
        references.add(sample.reference_index)
        assert sample.read_indices == (sample.reference_index, *sample.frame_indices[1:])
    assert starts == set(range(0, 30 - 12 + 1))  # span = interval * frames, as the release
    assert references == set(range(30))


def test_interval_lowered_for_short_clips_and_too_short_clips_refused():
    sample = sample_frames(9, np.random.default_rng(0), sample_n_frames=4, interval=3)
    assert sample.interval == 2 and np.diff(sample.frame_indices).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="too short"):
        sample_frames(3, np.random.default_rng(0), sample_n_frames=4, interval=3)


@pytest.mark.parametrize("source, size", [((100, 60), (64, 32)), ((60, 100), (32, 64)), ((90, 90), (64, 48))])
def test_random_crop_keeps_the_aspect_ratio_and_one_full_axis(source, size):
    rng = np.random.default_rng(1)
    boxes = [random_crop_box(*source, *size, rng) for _ in range(200)]
    for box in boxes:
        assert box.top + box.height <= source[0] and box.left + box.width <= source[1]
        assert (box.height, box.top) == (source[0], 0) or (box.width, box.left) == (source[1], 0)
        assert abs(box.height / box.width - size[0] / size[1]) < 0.05
    offsets = {box.top + box.left for box in boxes}
    assert min(offsets) == 0 and len(offsets) > 1


def test_hand_mask_margin_threshold_and_order():
    confident = HandBox(0.25, 0.25, 0.5, 0.5, score=0.9)
    mask = hand_mask([confident], 100, 100, margin=10)
    assert mask[15:60, 15:60].min() == pytest.approx(0.8) and mask.sum() == pytest.approx(0.8 * 45 * 45)
    # A low-score hand counts for nothing, and erases an earlier box it overlaps.
    weak = HandBox(0.4, 0.4, 0.9, 0.9, score=0.5)
    assert hand_mask([weak], 100, 100).sum() == 0
    erased = hand_mask([confident, weak], 100, 100)
    assert erased[30:60, 30:60].max() == 0 and erased[15:30, 15:30].min() == pytest.approx(0.8)
    # Boxes are clipped to the frame.
    edge = hand_mask([HandBox(0.0, 0.0, 0.05, 0.05, 1.0)], 100, 100)
    assert edge[:15, :15].min() == pytest.approx(0.8) and edge[15:, :].max() == 0


def test_hand_box_from_keypoints():
    points = np.zeros((21, 3))
    points[:3] = [[0.2, 0.3, 0.9], [0.4, 0.1, 0.6], [0.3, 0.5, 0.9]]
    box = HandBox.from_keypoints(points)
    assert (box.x0, box.y0, box.x1, box.y1) == pytest.approx((0.2, 0.1, 0.4, 0.5))
    assert box.score == pytest.approx(2.4 / 21)  # mean over all 21 points, undetected ones count 0
    assert HandBox.from_keypoints(np.zeros((21, 3))) is None


def test_example_takes_the_reference_as_frame_0_with_its_pose_and_weight_1():
    hands = [[HandBox(0.4, 0.4, 0.6, 0.6, 0.9)] for _ in range(30)]
    clip = numbered_clip(hands=hands)
    assert isinstance(clip, ClipSource)
    sample = FrameSample(frame_indices=(3, 6, 9, 12), reference_index=20, interval=3)
    example = load_example(clip, sample, CropBox(0, 0, 48, 40), 24, 20)
    values = ((example.pixels[:, 0, 5, 5] + 1) / 2 * 255).round().tolist()
    assert values == [20, 6, 9, 12]
    assert (example.poses[:, 0, 5, 5] * 255).round().tolist() == [235, 249, 246, 243]
    assert torch.equal(example.reference, example.pixels[0])
    assert example.pixels.shape == (4, 3, 24, 20) and example.weights.shape == (4, 1, 24, 20)
    assert torch.equal(example.weights[0], torch.ones(1, 24, 20))
    # Inside the hand box 1 + 4 * 0.8, outside 1 (edges are soft after the resize).
    assert example.weights[1, 0, 12, 10].item() == pytest.approx(4.2)
    assert example.weights[1, 0, 0, 0].item() == pytest.approx(1.0)


def test_example_crop_and_resize():
    """The crop window is what is resized; an unscaled crop keeps pixels exactly."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    clip = ArrayClip(frames, frames[:, ::-1].copy())
    sample = FrameSample((0, 1, 2), reference_index=5, interval=1)
    example = load_example(clip, sample, CropBox(0, 8, 32, 16), 32, 16)
    expected = torch.from_numpy(frames[[5, 1, 2], :, 8:24]).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    torch.testing.assert_close(example.pixels, expected)
    half = load_example(clip, sample, CropBox(0, 8, 32, 16), 16, 8)
    assert half.pixels.shape == (3, 3, 16, 8)
    torch.testing.assert_close(half.pixels.mean(), expected.mean(), atol=2e-3, rtol=0)


def test_draw_example_is_a_function_of_the_generator():
    clip = numbered_clip()
    a = draw_example(clip, np.random.default_rng(7), height=16, width=16, sample_n_frames=4, interval=2)
    b = draw_example(clip, np.random.default_rng(7), height=16, width=16, sample_n_frames=4, interval=2)
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.weights, b.weights)
    assert a.pixels.shape == (4, 3, 16, 16)


def test_array_clip_checks_its_arrays():
    with pytest.raises(ValueError, match="uint8"):
        ArrayClip(np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="differ"):
        ArrayClip(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="hands"):
        ArrayClip(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8), hands=[[]])


def test_video_clip_streams_the_frames_asked_for(tmp_path):
    from tests.video.clips import make_clip, read_counter

    from controlnext_video.training import VideoClip

    path = make_clip(tmp_path / "clip.mp4", frames=20, fps=25)
    hands = [[HandBox(0.1, 0.1, 0.2, 0.2, 0.9)] if i == 7 else [] for i in range(20)]
    clip = VideoClip(path, render_pose=lambda i: np.full((64, 96, 3), i, np.uint8), hands=hands)
    assert isinstance(clip, ClipSource) and clip.num_frames == 20 and clip.size == (64, 96)
    frames = clip.frames([12, 3, 5, 3])
    assert frames.shape == (4, 64, 96, 3)
    assert [read_counter(f) for f in frames] == [12, 3, 5, 3]
    assert clip.poses([4, 9])[:, 0, 0, 0].tolist() == [4, 9]
    assert clip.hand_boxes(7) == hands[7] and clip.hand_boxes(8) == []
    with pytest.raises(IndexError):
        clip.frames([20])
    with pytest.raises(ValueError, match="hands"):
        VideoClip(path, render_pose=lambda i: None, hands=[])
    bad = VideoClip(path, render_pose=lambda i: np.zeros((8, 8, 3), np.uint8), hands=hands)
    with pytest.raises(ValueError, match="render_pose"):
        bad.poses([0])
