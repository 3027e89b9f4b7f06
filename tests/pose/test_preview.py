"""The pose preview encodes at any clip and output size: its panels always have even sizes."""

import warnings
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from controlnext_video.video import VideoWriter, iter_frames, probe
from pose.errors import PoseInputWarning
from pose.preview import make_pose_preview, write_preview
from tests.pose.synthetic import full_frame, sequence


@pytest.fixture(scope="module")
def clip_4_3(tmp_path_factory, astronaut):
    """Three 640x480 (width x height) frames of the astronaut on grey, at 24 fps."""
    path = tmp_path_factory.mktemp("clips") / "four-three.mp4"
    person = np.asarray(Image.fromarray(astronaut).resize((440, 440)))
    with VideoWriter(path, 24) as writer:
        for k in range(3):
            frame = np.full((480, 640, 3), 128, np.uint8)
            frame[20:460, 80 + 10 * k:520 + 10 * k] = person
            writer.write(frame)
    return path


def test_poses_preview_of_a_640x480_clip_at_1024x576(tmp_path, clip_4_3, astronaut):
    reference = tmp_path / "ref.png"
    Image.fromarray(astronaut).save(reference)
    result = make_pose_preview(
        clip_4_3, reference, tmp_path / "out", stride=1, max_frames=2, height=1024, width=576, progress=False,
    )
    info = probe(result.preview)
    # driving panel 640x480 -> 682x512 (683 before rounding), reference panel 576x1024 -> 288x512
    assert (info.height, info.width, info.frame_count) == (512, 970, 2)


@pytest.mark.parametrize(("panel_height", "size"), [(64, (64, 150)), (149, (148, 346))])
def test_write_preview_rounds_panels_to_even_sizes(tmp_path, clip_4_3, panel_height, size):
    """A 4:3 clip beside a square reference at panel height 64 made a 64x149 (HxW) frame."""
    detected = sequence([full_frame((320, 120), 640, 480, scale=1.2)] * 3, 640, 480, fps=Fraction(24))
    aligned = sequence([full_frame((256, 120), 512, 512, scale=1.4)] * 3, 512, 512, fps=Fraction(24))
    reference = np.full((512, 512, 3), 90, np.uint8)
    out = write_preview(
        clip_4_3, reference, detected, aligned, tmp_path / "preview.mp4",
        stride=1, max_frames=None, panel_height=panel_height, progress=False,
    )
    frames = list(iter_frames(out))
    assert len(frames) == 3 and frames[0].shape[:2] == size


def test_input_warnings_become_notes_of_the_poses_command(tmp_path, clip_4_3, astronaut):
    small = tmp_path / "small.png"
    Image.fromarray(astronaut).resize((200, 200)).save(small)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoseInputWarning)  # reported as a note, not issued
        result = make_pose_preview(
            clip_4_3, small, tmp_path / "out", stride=1, max_frames=2, height=1024, width=576,
            preview=False, progress=False,
        )
    assert [n for n in result.notes if "small.png: 200x200 px is far below the 576x1024 output" in n]
