"""Multi-GPU segment runs, the parts that need no processes: which GPUs, the worker's option,
how a failed run is classified, the planning of automatic segment lengths, the report."""

from __future__ import annotations

import json

import pytest

from controlnext_video.windows import auto_segment_length, plan_windows
from flows.ranks import FAILURES_DIR, LOG_FILE, RankFailed, RanksLost, _failure, _raised_by_a_collective, segment_gpus
from flows.report import gpus_text
from flows.request import RenderRequest


def test_segment_gpus():
    worker = ("0", "1", "2", "3")
    assert segment_gpus(0, worker) == worker
    assert segment_gpus(2, worker) == ("0", "1")
    assert segment_gpus(8, worker) == worker  # a job asking more than the worker has uses what it has
    assert segment_gpus(0, ()) == ()


def test_worker_gpus_option(monkeypatch):
    from typer.testing import CliRunner

    import flows.cli as cli

    started = []
    monkeypatch.setattr("os.execve", lambda path, args, env: started.append((args, env)))
    result = CliRunner().invoke(cli.app, ["worker", "--pool", "gpu", "--gpus", "2,3", "--name", "w"])
    assert result.exit_code == 0, result.output
    (args, env), = started
    assert (env["CUDA_VISIBLE_DEVICES"], env["CONTROLNEXT_GPUS"], env["WORKER_ID"]) == ("2,3", "2,3", "w")
    result = CliRunner().invoke(cli.app, ["worker", "--gpus", "0,0"])
    assert result.exit_code == 2 and "distinct GPU indices" in result.output
    monkeypatch.setenv("CONTROLNEXT_GPUS", "2,3")
    from flows.settings import Environment

    assert Environment.read().gpus == ("2", "3")


@pytest.mark.parametrize("window, overlap", [(24, 6), (8, 3), (4, 1), (128, 6)])
@pytest.mark.parametrize("gpus", [1, 2, 3, 8])
def test_auto_segment_length_divides_over_the_gpus(window, overlap, gpus):
    length = auto_segment_length(window, overlap, gpus)
    windows = len(plan_windows(length + 1, window, overlap).windows)  # + the reference pose frame
    assert windows % gpus == 0
    assert len(plan_windows(length + 2, window, overlap).windows) > windows  # the longest with that count


def test_auto_segment_length_in_the_request():
    inputs = dict(reference="r.png", driving="d.mp4")
    auto = RenderRequest(**inputs, segment_length=0, gpus_per_segment=8)
    assert auto.planned_segment_length() == auto_segment_length(24, 6, 8) == 581
    assert RenderRequest(**inputs, segment_length=0).planned_segment_length() == 77  # gpus_per_segment 0 plans for 1
    explicit = auto.model_copy(update=dict(segment_length=581))
    assert auto.pixel_settings() == explicit.pixel_settings()  # the length planned is what counts
    faster = RenderRequest(**inputs, gpus_per_segment=4, rank_timeout=20)
    assert faster.pixel_settings() == RenderRequest(**inputs).pixel_settings()  # GPUs do not change the pictures
    with pytest.raises(ValueError, match="segment_length must be at least 2"):
        RenderRequest(**inputs, segment_length=1)


def test_a_failed_run_is_lost_unless_a_rank_failed_on_its_input(tmp_path):
    (tmp_path / LOG_FILE).write_text("launcher output\n")
    assert isinstance(_failure(tmp_path, -9), RanksLost)  # nobody said anything: a rank was killed
    failures = tmp_path / FAILURES_DIR
    failures.mkdir()
    (failures / "rank-0.json").write_text(json.dumps(dict(rank=0, kind="lost", error="RuntimeError: reset by peer")))
    lost = _failure(tmp_path, 1)
    assert isinstance(lost, RanksLost) and "rank 0: RuntimeError: reset by peer" in str(lost)
    (failures / "rank-1.json").write_text(json.dumps(dict(rank=1, kind="input", error="WeightsError: missing")))
    failed = _failure(tmp_path, 1)
    assert isinstance(failed, RankFailed) and str(failed) == "rank 1: WeightsError: missing"


def test_errors_raised_inside_torch_distributed_count_as_collective():
    """gloo reports a peer gone or late as a plain RuntimeError from inside torch.distributed."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="invalid root rank") as inside:
            dist.broadcast(torch.zeros(1), src=3)  # no rank 3: refused by gloo, a RuntimeError
    finally:
        dist.destroy_process_group()
    assert _raised_by_a_collective(inside.value)
    with pytest.raises(ValueError) as outside:
        json.loads("{")
    assert not _raised_by_a_collective(outside.value)


def test_report_names_the_gpus():
    assert gpus_text({}) == "1"
    assert gpus_text(dict(devices=["cpu", "cpu"])) == "2 × cpu"
    assert gpus_text(dict(devices=["NVIDIA H100", "NVIDIA A100"])) == "NVIDIA H100, NVIDIA A100"


def test_the_plan_states_the_speedup_cap():
    from controlnext_video.segments import plan_segments
    from flows.stages import JobContext, window_balance

    job = JobContext(store=None, layout=None, request=RenderRequest(reference="r.png", driving="d.mp4"), env=None)
    text = window_balance(job, plan_segments(500, 240, 8), 8)  # 240 frames + the reference pose: 14 windows
    assert text == ("segments of up to 240 frames have 14 windows: on 8 GPU(s) each, at most 7.00x one GPU's "
                    "speed (W / ceil(W / G))")
