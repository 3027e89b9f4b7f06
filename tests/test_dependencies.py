"""Dependencies point one way: the library packages never import prefect or flows."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARY_PACKAGES = ("controlnext_video", "pose", "storage")
FORBIDDEN = ("prefect", "flows")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", LIBRARY_PACKAGES)
def test_library_never_imports_flows_or_prefect(package):
    offenders = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not offenders, offenders


def test_pose_never_touches_the_diffusion_model():
    """pose may use the project's video module, never the model code, torch or diffusers."""
    offenders = []
    for path in sorted((REPO_ROOT / "pose").rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in ("torch", "diffusers") or (top == "controlnext_video" and not name.startswith("controlnext_video.video")):
                offenders.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not offenders, offenders


def test_importing_the_library_does_no_work():
    """Importing the packages loads neither torch nor any model (nothing happens at import time)."""
    code = (
        "import sys; import controlnext_video, controlnext_video.video, controlnext_video.training, pose, "
        "pose.detect, pose.preview, pose.extract, storage; heavy = [m for m in ('torch', 'diffusers', 'mediapipe', 'av', 'decord', 'cv2', "
        "'onnxruntime', 'fsspec', 'prefect', 'tqdm') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == ""


# Flows are glue: a stage calls library steps. A function this long is doing the library's work.
MAX_FLOW_FUNCTION_LINES = 60


def test_flow_functions_stay_glue():
    long = []
    for path in sorted((REPO_ROOT / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FLOW_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
