"""Ctrl-C and SIGTERM stop `controlnext-video render` at any point, leave nothing half-written, and
a rerun resumes. The CLI runs as a subprocess, as a user runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.localcluster import PROJECT_DIR

pytestmark = pytest.mark.e2e

# Generous: the stop itself takes seconds, but the machine may be busy.
STOP_TIMEOUT = 120
START_TIMEOUT = 600


def render_args(tiny_model, clip_inputs, store: Path) -> list[str]:
    reference, driving = clip_inputs
    return ["render", "--reference", str(reference), "--driving", str(driving), "--model", str(tiny_model),
            "--store", str(store), "--output", str(store.parent / "out.mp4"), "--height", "96", "--width", "64",
            "--steps", "2", "--window", "4", "--overlap", "1", "--segment-length", "8", "--segment-overlap", "2"]


def start(prefect_server, args, prelude: str = "", **env) -> subprocess.Popen:
    code = prelude + "\nfrom flows.cli import main\nmain()\n"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=dict(prefect_server.env, **env),
                            cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(predicate, process, timeout=START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the render ended first ({process.returncode}): {process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the render did not get there in time"
        time.sleep(0.02)


def records(store: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in store.glob("jobs/*/segments/*/record.json")}


def assert_nothing_half_written(store: Path) -> None:
    """Every recorded segment's frames are complete; no visible file is a leftover of a write."""
    import hashlib

    for path in store.glob("jobs/*/segments/*/record.json"):
        for frame in json.loads(path.read_text())["frames"]:
            png = path.parent / "frames" / f"frame_{frame['frame']:06d}.png"
            assert hashlib.sha256(png.read_bytes()).hexdigest() == frame["sha256"], png
    assert not [p for p in store.rglob("*") if p.name.endswith(".partial") and not p.name.startswith(".")]


def test_sigint_at_a_segment_boundary_stops_and_a_rerun_resumes(prefect_server, tiny_model, clip_inputs, tmp_path):
    store = tmp_path / "store"
    args = render_args(tiny_model, clip_inputs, store)
    process = start(prefect_server, args)
    wait_until(lambda: records(store), process)  # the first segment just finished
    process.send_signal(signal.SIGINT)
    assert process.wait(STOP_TIMEOUT) == 130, process.stderr.read()[-3000:]
    assert "render stopped" in process.stderr.read()
    assert not (tmp_path / "out.mp4").exists()
    assert_nothing_half_written(store)
    kept = records(store)
    (plan,) = store.glob("jobs/*/plan.json")
    assert 1 <= len(kept) < len(json.loads(plan.read_text())["segments"])  # stopped mid-job

    rerun = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=prefect_server.env, cwd=PROJECT_DIR,
                           capture_output=True, text=True, timeout=START_TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp_path / "out.mp4").stat().st_size > 0
    after = records(store)
    assert all(after[path] == data for path, data in kept.items())  # finished segments not rendered again
    assert len(after) > len(kept)


SWALLOWING_LOAD = textwrap.dedent("""
    # Loading that runs a finaliser for a few seconds, as weight loading does: a KeyboardInterrupt
    # raised inside a finaliser is printed as "Exception ignored" and dropped by Python.
    import os, time
    from controlnext_video.pipeline import ControlNeXtSVDPipeline

    original = ControlNeXtSVDPipeline.from_pretrained.__func__

    class Finaliser:
        def __del__(self):
            open(os.environ["LOADING_MARKER"], "w").close()
            end = time.monotonic() + 8
            while time.monotonic() < end:
                time.sleep(0.05)

    def from_pretrained(cls, *args, **kwargs):
        Finaliser()
        return original(cls, *args, **kwargs)

    ControlNeXtSVDPipeline.from_pretrained = classmethod(from_pretrained)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_model_loading_is_not_swallowed(prefect_server, tiny_model, clip_inputs, tmp_path, signum):
    store, marker = tmp_path / "store", tmp_path / "loading"
    process = start(prefect_server, render_args(tiny_model, clip_inputs, store), SWALLOWING_LOAD,
                    LOADING_MARKER=str(marker))
    wait_until(marker.exists, process)
    time.sleep(0.5)  # well inside the finaliser
    process.send_signal(signum)
    assert process.wait(STOP_TIMEOUT) == 128 + signum, process.stderr.read()[-3000:]
    assert not records(store) and not (tmp_path / "out.mp4").exists()
    assert_nothing_half_written(store)
