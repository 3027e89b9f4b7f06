"""A missing optional dependency of `pose` fails with an install hint (the import rules are in
tests/test_dependencies.py)."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_missing_optional_dependency_gives_the_install_hint():
    code = (
        "import sys; sys.modules['mediapipe'] = None\n"
        "from pose.detect import make_detector\n"
        "try:\n    make_detector('mediapipe')\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert "pip install 'controlnext-video[pose]'" in out.stdout and "mediapipe" in out.stdout
