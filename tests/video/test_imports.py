from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_video_io_loads_no_heavy_or_foreign_modules() -> None:
    code = (
        "import sys, controlnext_video.video as v; "
        "print(sorted(m for m in ('av', 'decord', 'PIL', 'torch', 'prefect', 'flows', 'storage', 'pose') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert run.stdout.strip() == "[]"


def test_video_io_imports_nothing_else_from_the_project() -> None:
    for source in (ROOT / "controlnext_video" / "video").glob("*.py"):
        text = source.read_text()
        for banned in ("controlnext_video.", "import storage", "from storage", "flows", "prefect", "from pose", "import pose"):
            assert banned not in text, f"{source.name} mentions {banned!r}"
