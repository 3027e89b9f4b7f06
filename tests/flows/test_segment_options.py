"""The worker-side pipeline options a request carries: compile, channels-last, a GPU memory cap."""

from __future__ import annotations

import pytest
import torch


def test_pipeline_options_are_applied_and_cached_per_setting(tiny_model):
    from flows.stages import _pipelines, get_pipeline

    plain = get_pipeline(str(tiny_model), "cpu", "float32")
    assert get_pipeline(str(tiny_model), "cpu", "float32") is plain  # loaded once per process
    assert not plain.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    fast = get_pipeline(str(tiny_model), "cpu", "float32", compile=True, channels_last=True)
    assert fast is not plain
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    blocks = (*fast.unet.down_blocks, fast.unet.mid_block, *fast.unet.up_blocks)
    assert all(block._compiled_call_impl is not None for block in blocks)  # compiled lazily, on first call
    assert plain.unet.down_blocks[0]._compiled_call_impl is None
    for key in [k for k in _pipelines if k[0] == str(tiny_model)]:
        del _pipelines[key]


def test_request_and_cli_carry_the_options(tiny_model):
    from flows.request import RenderRequest

    base = RenderRequest(reference="r.png", driving="d.mp4")
    fast = base.model_copy(update=dict(compile=True, channels_last=True, gpu_memory_gib=22, segments_per_run=3))
    assert fast.pixel_settings() == base.pixel_settings()  # speed settings do not change the job
    with pytest.raises(ValueError, match="gpu_memory_gib"):
        RenderRequest(gpu_memory_gib=-1)
    from .test_options import render_options

    options = {opt for param in render_options().values() for opt in param.opts}
    for option in ("--compile", "--channels-last", "--gpu-memory-gib", "--segments-per-run", "--max-in-flight",
                   "--priority"):
        assert option in options, option


def test_render_command_passes_the_options_into_the_request(monkeypatch):
    from typer.testing import CliRunner

    import flows.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_run_render", lambda request: seen.append(request) or {})
    monkeypatch.setattr(cli, "_print_result", lambda result, store: None)
    result = CliRunner().invoke(cli.app, [
        "render", "--reference", "r.png", "--driving", "d.mp4", "--model", "m", "--output", "o.mp4",
        "--dispatch", "deployment", "--priority", "rush", "--max-in-flight", "2", "--segments-per-run", "3",
        "--gpu-memory-gib", "22", "--compile", "--channels-last",
    ])
    assert result.exit_code == 0, result.output
    (request,) = seen
    assert (request.priority, request.max_in_flight, request.segments_per_run) == ("rush", 2, 3)
    assert (request.gpu_memory_gib, request.compile, request.channels_last) == (22.0, True, True)
