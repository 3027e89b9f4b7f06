"""The CLI's main job: `controlnext-video demo` on a machine with no weights, and `render`."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import pytest

from flows.localcluster import PROJECT_DIR

pytestmark = pytest.mark.e2e


def cli(prefect_server, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=prefect_server.env, cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_runs_the_whole_job(prefect_server, tmp_path):
    from controlnext_video.video import probe

    result = cli(prefect_server, "demo", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "random weights" in result.stdout and "download-weights" in result.stdout
    info = probe(tmp_path / "demo" / "demo.mp4")
    assert info.fps == Fraction(12) and info.frame_count == 36 and info.has_audio


def test_render_command_and_its_errors(prefect_server, tiny_model, clip_inputs, tmp_path):
    from controlnext_video.video import probe

    reference, driving = clip_inputs
    common = ["render", "--reference", str(reference), "--driving", str(driving), "--model", str(tiny_model),
              "--store", str(tmp_path / "store"), "--height", "96", "--width", "64", "--steps", "2",
              "--window", "4", "--overlap", "1", "--segment-length", "40"]
    bad = cli(prefect_server, *common, "--output", str(tmp_path / "out.mp4"), "--overlap", "4")
    assert bad.returncode == 2 and "overlap (4) must be smaller than window (4)" in bad.stderr
    ok = cli(prefect_server, *common, "--output", str(tmp_path / "out.mov"), "--format", "prores", "--no-audio",
             "--guidance", "2.5")
    assert ok.returncode == 0, ok.stderr[-3000:]
    info = probe(tmp_path / "out.mov")
    assert info.codec == "prores" and not info.has_audio and info.fps == Fraction(30000, 1001) / 2
    missing = cli(prefect_server, *common, "--output", str(tmp_path / "x.mp4"), "--driving", str(tmp_path / "nope.mp4"))
    assert missing.returncode == 1 and "driving video not found" in missing.stderr
