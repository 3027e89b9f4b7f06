"""Frame conditions (edges, person mask): extractors, rendering, the clip's framing, cache identity."""

from __future__ import annotations

import numpy as np
import pytest

from pose.conditions import (
    CONDITION_NAMES, ConditionPreview, ConditionSettings, EdgeSettings, PersonSegmenter, canny_edges,
    check_conditions, condition_digest, extract_frames, iter_clip_maps, render_map,
)


def test_canny_edges_outline_a_square():
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[16:48, 16:48] = 200
    edges = canny_edges(frame)
    assert edges.shape == (64, 64) and edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    assert edges[30:34, 30:34].max() == 0 and edges[:8].max() == 0  # inside and far outside: nothing
    assert edges[14:50, 14:18].any() and edges[14:50, 46:50].any()  # the left and right sides
    assert np.array_equal(render_map(edges)[..., 1], edges) and render_map(edges).shape == (64, 64, 3)


def test_person_mask_covers_the_person(astronaut):
    segmenter = PersonSegmenter()
    try:
        mask = segmenter(astronaut)
        empty = segmenter(np.full_like(astronaut, 128))
    finally:
        segmenter.close()
    assert mask.shape == astronaut.shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert 0.1 < (mask > 0).mean() < 0.9  # the astronaut, not the whole picture
    assert (mask[200:400, 150:350] > 0).mean() > 0.5  # her body, centre of the photo
    assert (empty > 0).mean() < 0.05


def test_maps_follow_the_clips_framing(tmp_path):
    """A bright block left of centre in a wide clip: fitted like the reference (cover, centre
    crop) to a portrait output, its edges stay left of centre."""
    from controlnext_video.video import VideoWriter

    path = tmp_path / "wide.mp4"
    with VideoWriter(path, 24) as writer:
        for k in range(6):
            frame = np.full((64, 128, 3), 30, np.uint8)
            frame[16:48, 40 + k : 56 + k] = 220
            writer.write(frame)
    with ConditionPreview(tmp_path / "edges.mp4", "edges", 12) as preview:
        pairs = list(iter_clip_maps(path, "edges", height=64, width=48, stride=2, max_frames=None))
        for frame, condition_map in pairs:
            preview.write(frame, condition_map)
    frames, maps = np.stack([f for f, _ in pairs]), np.stack([m for _, m in pairs])
    assert maps.shape == (3, 64, 48) and frames.shape == (3, 64, 48, 3)
    assert np.array_equal(maps, extract_frames(iter(frames), "edges"))  # the same extractor, streamed
    columns = np.flatnonzero(maps[0].any(axis=0))
    # source columns 40..56 of 128, centre crop of 48 from column 40: output columns 0..16
    assert columns.max() <= 20 and not maps[:, :, 24:].any()
    assert preview.frames == 3 and preview.path.stat().st_size > 0
    # cached maps are paired with the frames instead of extracted again
    given = [np.full((64, 48), 7, np.uint8)] * 3
    assert [m[0, 0] for _, m in iter_clip_maps(path, "edges", height=64, width=48, stride=2, max_frames=None,
                                               maps=given)] == [7, 7, 7]


def test_a_bad_clip_is_named(tmp_path):
    from pose.errors import PoseInputError

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(PoseInputError, match="broken.mp4"):
        next(iter_clip_maps(bad, "edges", height=64, width=48, stride=1, max_frames=None))


def test_cache_identity_and_storage():
    settings = ConditionSettings()
    base = dict(height=64, width=48, stride=2, max_frames=None)
    digest = condition_digest("a" * 64, "edges", settings, **base)
    assert digest == condition_digest("a" * 64, "edges", settings, **base)
    assert digest != condition_digest("a" * 64, "mask", settings, **base)
    assert digest != condition_digest("b" * 64, "edges", settings, **base)
    assert digest != condition_digest("a" * 64, "edges", settings, **dict(base, stride=1))
    other = ConditionSettings(edges=EdgeSettings(low_threshold=50))
    assert digest != condition_digest("a" * 64, "edges", other, **base)


def test_condition_lists_are_checked():
    assert check_conditions(["mask", "pose"]) == ("pose", "mask")  # registry order
    assert set(CONDITION_NAMES) == {"pose", "edges", "mask"}
    for bad in ([], ["pose", "pose"], ["depth"]):
        with pytest.raises(ValueError):
            check_conditions(bad)
    with pytest.raises(ValueError, match="not a frame condition"):
        extract_frames(iter([]), "pose")
    with pytest.raises(ValueError, match="odd"):
        EdgeSettings(blur=4)
