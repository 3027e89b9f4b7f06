"""The `poses` command end to end: real detection on a synthetic clip, JSON and preview out."""

import json

import av
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pose import openpose_json
from pose.preview import make_pose_preview
from pose.settings import PoseSettings


def _reference(tmp_path, photo):
    path = tmp_path / "ref.png"
    Image.fromarray(photo).save(path)
    return path


def test_poses_command_writes_json_and_a_side_by_side_preview(tmp_path, walking_clip, astronaut):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "poses", "--driving", str(walking_clip), "--reference", str(_reference(tmp_path, astronaut)),
        "--out", str(out), "--stride", "1", "--height", "448", "--width", "256",
        "--preview-height", "224", "--per-frame-json",
    ])
    assert result.exit_code == 0, result.output
    assert "12 pose frames written" in result.output
    assert "frames filled (interpolated): 5, 6" in result.output

    aligned = openpose_json.read_sequence(out / "aligned_poses.json")
    driving = openpose_json.read_sequence(out / "driving_poses.json")
    assert (aligned.width, aligned.height) == (256, 448) and (driving.width, driving.height) == (384, 384)
    assert len(aligned) == 12 and aligned.fps == 30 and not aligned.missing.any()
    reference = openpose_json.read_frame(out / "reference_pose.json")
    # frame 0 is anchored on the reference's neck
    np.testing.assert_allclose(aligned[0].body[1, :2], reference.body[1, :2], atol=1e-5)
    assert len(list((out / "aligned").glob("*_keypoints.json"))) == 12
    assert json.loads((out / "aligned" / "frame_000000000005_keypoints.json").read_text())["controlnext_video"]["filled"]

    with av.open(str(out / "preview.mp4")) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 12
    assert frames[0].shape == (224, 224 + 128, 3)  # driving panel 224x224 | reference panel 128x224


def test_linear_alignment_and_no_smoothing_via_the_function(tmp_path, walking_clip, astronaut):
    result = make_pose_preview(
        walking_clip, _reference(tmp_path, astronaut), tmp_path / "lin", PoseSettings(align="linear", smoothing=None),
        stride=2, height=448, width=256, preview=False, progress=False,
    )
    assert result.preview is None and result.frames == 6
    assert result.missing_frames == () and result.filled_frames == (6,)


def test_errors_are_reported_without_a_traceback(tmp_path, walking_clip):
    wall = tmp_path / "wall.png"
    Image.fromarray(np.full((300, 200, 3), 90, np.uint8)).save(wall)
    result = CliRunner().invoke(app, ["poses", "--driving", str(walking_clip), "--reference", str(wall),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "error:" in result.output and "wall.png: no person detected" in result.output
    result = CliRunner().invoke(app, ["poses", "--driving", str(walking_clip), "--reference", str(wall),
                                      "--out", str(tmp_path / "o"), "--align", "sideways"])
    assert result.exit_code == 2 and "'sideways' is not one of" in " ".join(result.output.replace("│", "").split())
    result = CliRunner().invoke(app, ["poses", "--driving", str(walking_clip), "--reference", str(wall),
                                      "--out", str(tmp_path / "o"), "--align", "linear", "--root-motion", "frame"])
    assert result.exit_code == 2 and "root_motion applies to align 'retarget' only" in result.output


def test_conditions_command_previews_edges_and_masks_as_render_takes_them(tmp_path, walking_clip, astronaut):
    """The maps written by `conditions` are those `render` takes: the same fitting and extractor."""
    from pose.conditions import extract_frames, iter_clip_maps
    from pose.extract import prepare_reference

    out = tmp_path / "maps"
    reference = _reference(tmp_path, astronaut)
    result = CliRunner().invoke(app, [
        "conditions", "--driving", str(walking_clip), "--reference", str(reference), "--out", str(out),
        "--stride", "2", "--height", "128", "--width", "96", "--maps-png",
    ])
    assert result.exit_code == 0, result.output
    assert "6 frames of edges, mask written" in result.output  # default: both frame conditions
    for name in ("edges", "mask"):
        with av.open(str(out / f"{name}_preview.mp4")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
        assert len(frames) == 6 and frames[0].shape == (128, 2 * 96, 3)  # fitted frame | map
        pngs = sorted((out / name).glob("*.png"))
        assert [p.name for p in pngs] == [f"{k:06d}.png" for k in range(6)]
        expected = [m for _, m in iter_clip_maps(walking_clip, name, height=128, width=96, stride=2, max_frames=None)]
        assert all(np.array_equal(np.asarray(Image.open(p)), m) for p, m in zip(pngs, expected))
        own = extract_frames(iter([prepare_reference(reference, height=128, width=96)]), name)[0]
        assert np.array_equal(np.asarray(Image.open(out / f"{name}_reference.png")), own)
    assert np.asarray(Image.open(out / "mask_reference.png")).any()  # the astronaut is found


def test_conditions_command_names_bad_input(tmp_path, walking_clip, astronaut):
    reference = _reference(tmp_path, astronaut)
    runner = CliRunner()
    only_pose = runner.invoke(app, ["conditions", "--driving", str(walking_clip), "--reference", str(reference),
                                    "--out", str(tmp_path / "o"), "--conditions", "pose"])
    assert only_pose.exit_code == 2 and "the pose has its own preview" in only_pose.output
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    bad = runner.invoke(app, ["conditions", "--driving", str(broken), "--reference", str(reference),
                              "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "broken.mp4" in bad.output and "Traceback" not in bad.output
