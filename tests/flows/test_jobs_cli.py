"""`controlnext-video jobs list|clean` on a store's jobs."""

from __future__ import annotations

from storage import ArtifactStore, list_jobs
from tests.storage.test_jobs import T0, _job


def test_jobs_commands(tmp_path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    store = ArtifactStore(tmp_path)
    _job(store, "old-done", "succeeded", T0)
    _job(store, "old-running", "running", T0)
    listed = CliRunner().invoke(app, ["jobs", "list", "--store", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert [line.split()[:2] for line in listed.output.splitlines()] == [["old-done", "succeeded"],
                                                                      ["old-running", "running"]]
    dry = CliRunner().invoke(app, ["jobs", "clean", "--older-than", "7d", "--dry-run", "--store", str(tmp_path)])
    assert dry.exit_code == 0 and "would delete 1 job(s): old-done" in dry.output
    assert len(list_jobs(store)) == 2
    done = CliRunner().invoke(app, ["jobs", "clean", "--older-than", "7d", "--store", str(tmp_path)])
    assert done.exit_code == 0 and "deleted 1 job(s): old-done" in done.output
    assert [j.job_id for j in list_jobs(store)] == ["old-running"]
    bad = CliRunner().invoke(app, ["jobs", "clean", "--older-than", "a week", "--store", str(tmp_path)])
    assert bad.exit_code == 2 and "use a number and d, h or m" in bad.output
