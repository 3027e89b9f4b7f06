"""Shared test fixtures.

`../shared/` (beside the checkout) holds the parity fixtures; it is absent in a user's fresh
clone, so tests that need it skip with a clear reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_DIR} (absent in a fresh clone)")
    return SHARED_DIR


def pytest_configure(config):
    # Property tests run on noisy shared machines: no per-example deadline.
    from hypothesis import settings

    settings.register_profile("project", deadline=None)
    settings.load_profile("project")
