from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_storage_never_imports_prefect_flows_or_the_library(tmp_path: Path) -> None:
    code = (
        "import sys, storage; "
        f"s = storage.ArtifactStore({str(tmp_path)!r}); s.write_json('jobs/j/request.json', {{}}); "
        "storage.list_jobs(s); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows', 'controlnext_video', 'pose', 'av', 'torch')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert run.stdout.strip() == "[]"


def test_importing_storage_loads_no_fsspec_until_a_store_is_opened() -> None:
    code = "import sys, storage; print('fsspec' in sys.modules, 's3fs' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert run.stdout.strip() == "False False"
