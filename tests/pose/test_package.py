"""Package rules: importing `pose` does no work; `pose` never reaches into flows, prefect or the
diffusion model package."""

import ast
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_import_loads_no_heavy_library():
    code = (
        "import sys, pose, pose.detect, pose.preview, pose.extract; "
        "print(','.join(m for m in ('cv2', 'mediapipe', 'onnxruntime', 'av', 'torch', 'prefect', 'tqdm') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == ""


def test_pose_never_imports_flows_prefect_or_the_model_package():
    offenders = []
    for path in sorted((REPO_ROOT / "pose").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[0] in ("flows", "prefect", "controlnext_video", "torch", "diffusers")]
    assert not offenders, offenders


def test_missing_optional_dependency_gives_the_install_hint():
    code = (
        "import sys; sys.modules['mediapipe'] = None\n"
        "from pose.detect import make_detector\n"
        "try:\n    make_detector('mediapipe')\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert "pip install 'controlnext-video[pose]'" in out.stdout and "mediapipe" in out.stdout
