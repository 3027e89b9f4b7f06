"""One real Prefect server per test session (started once: ~10-15 s), shared by the flow tests.

The server runs in its own process with its own PREFECT_HOME and SQLite database; the test
process talks to it through PREFECT_API_URL. Workers are real `prefect worker` processes.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The session's Prefect server (a `LocalCluster`); the test process is its client."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.localcluster import LocalCluster

    cluster = LocalCluster(
        tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("prefect-logs"),
        extra_env=dict(CONTROLNEXT_WORK_DIR=str(tmp_path_factory.mktemp("work"))),
    ).start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: cluster.url}):
            yield cluster
    finally:
        for handler in logging.getLogger("prefect").handlers:  # send run logs before the server goes
            if isinstance(handler, APILogHandler):
                handler.flush()
        cluster.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from controlnext_video.factory import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model"), seed=0)


@pytest.fixture(scope="session")
def clip_inputs(tmp_path_factory):
    """A reference image and a 2 s driving clip at 30000/1001 fps with a tone track."""
    from flows.demo import make_demo_inputs

    return make_demo_inputs(tmp_path_factory.mktemp("inputs"), seconds=2.0, fps=Fraction(30000, 1001))


def small_request(reference, driving, model, store, **overrides):
    """Quick settings for tests: tiny frames, few steps, several segments."""
    from flows.request import RenderRequest

    settings = dict(
        reference=str(reference), driving=str(driving), model=str(model), store=str(store),
        height=96, width=64, steps=2, window=4, overlap=1, stride=2, decode_chunk_size=4,
        segment_length=8, segment_overlap=2, seed=7,
    )
    settings.update(overrides)
    return RenderRequest(**settings)


@pytest.fixture(scope="session")
def local_job_progress() -> list[tuple[str, float, str]]:
    """Every update of the progress bars during `local_job` (key, fraction done, text)."""
    return []


@pytest.fixture(scope="session")
def local_job(prefect_server, tiny_model, clip_inputs, tmp_path_factory, local_job_progress):
    """One job rendered in-process (segments in this process), shared by the tests that need it."""
    from flows.progress import add_listener, remove_listener
    from flows.render import render

    reference, driving = clip_inputs
    out = tmp_path_factory.mktemp("local-job")
    request = small_request(reference, driving, tiny_model, out / "store", output=str(out / "result.mp4"))

    def listener(key: str, fraction: float, text: str) -> None:
        local_job_progress.append((key, fraction, text))

    add_listener(listener)
    try:
        state = render(request, return_state=True)
    finally:
        remove_listener(listener)
    assert state.is_completed(), state.message
    return request, state.result(), out
