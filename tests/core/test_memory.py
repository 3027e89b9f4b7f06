"""Memory planning and the retry at a smaller plan on out-of-memory (simulated on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controlnext_video.memory import plan_windows_per_batch, window_bytes

from .conftest import initial_latents, random_inputs

N, H, W = 9, 64, 64
KW = dict(num_inference_steps=2, window_size=3, overlap=1, output_type="latent")


def run(pipe, **kwargs):
    ref, poses = random_inputs(N, H, W)
    return pipe(ref, poses, latents=initial_latents(pipe, N, H, W), generator=torch.Generator().manual_seed(0),
                **{**KW, **kwargs})


def test_plan_grows_with_free_memory_and_stays_in_bounds():
    gib = 2**30
    small = plan_windows_per_batch(8 * gib, 1024, 576, 24, torch.bfloat16, num_windows=13)
    large = plan_windows_per_batch(120 * gib, 1024, 576, 24, torch.bfloat16, num_windows=13)
    assert 1 <= small <= large <= 13
    assert plan_windows_per_batch(1, 1024, 576, 24, torch.bfloat16, num_windows=13) == 1
    assert plan_windows_per_batch(10**15, 1024, 576, 24, torch.bfloat16, num_windows=13) == 13
    assert window_bytes(1024, 576, 24, torch.float32) == 2 * window_bytes(1024, 576, 24, torch.bfloat16)


def test_no_gpu_means_one_window_per_call(tiny_pipe):
    from controlnext_video.windows import plan_windows

    assert tiny_pipe.windows_per_batch is None
    assert tiny_pipe.batch_plan(H, W, plan_windows(N, 3, 1)) == 1


@pytest.fixture
def oom_above(tiny_pipe):
    """Make the UNet raise out-of-memory for batches of more than `limit` samples."""
    state = {"limit": None, "raised": 0}

    def hook(module, args):
        if state["limit"] is not None and args[0].shape[0] > state["limit"]:
            state["raised"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = tiny_pipe.unet.register_forward_pre_hook(hook)
    yield state
    handle.remove()
    tiny_pipe.windows_per_batch = None
    tiny_pipe._batch_limits.clear()


def test_out_of_memory_halves_the_batch_and_finishes(tiny_pipe, oom_above):
    expected = run(tiny_pipe)
    tiny_pipe.windows_per_batch = 4
    oom_above["limit"] = 2 * 2  # two windows with guidance
    with pytest.warns(RuntimeWarning, match="out of memory: 2 windows per UNet call"):
        got = run(tiny_pipe)
    assert oom_above["raised"] == 1
    assert (got - expected).abs().max().item() < 1e-3
    run(tiny_pipe)  # the next call (next segment) starts below the limit: no new failure
    assert oom_above["raised"] == 1


def test_out_of_memory_with_one_window_is_an_error(tiny_pipe, oom_above):
    oom_above["limit"] = 1
    with pytest.raises(torch.OutOfMemoryError):
        run(tiny_pipe)


def test_decode_out_of_memory_lowers_the_chunk(tiny_pipe):
    latents = run(tiny_pipe)
    expected = np.concatenate(list(tiny_pipe.decode_latents(latents, 2)))

    def hook(module, args):
        if args[0].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = tiny_pipe.vae.decoder.register_forward_pre_hook(hook)
    try:
        with pytest.warns(RuntimeWarning, match="decode_chunk_size lowered to 4"):
            got = np.concatenate(list(tiny_pipe.decode_latents(latents, 8)))
    finally:
        handle.remove()
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_channels_last_agrees(tiny_model_dir):
    from controlnext_video import ControlNeXtSVDPipeline

    pipe = ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir)
    plain = run(pipe)
    pipe.enable_channels_last()
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert (run(pipe) - plain).abs().max().item() < 1e-3


@pytest.mark.slow
def test_compiled_pipeline_agrees(tiny_model_dir):
    """Regional torch.compile (slow: compiles the UNet blocks on first use)."""
    from controlnext_video import ControlNeXtSVDPipeline

    pipe = ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir)
    plain = run(pipe)
    pipe.compile()
    first = run(pipe)
    assert (first - plain).abs().max().item() < 1e-3
    assert (run(pipe) - first).abs().max().item() < 1e-3  # the compiled code is reused by later calls
    assert sum(len(m._forward_hooks) for m in pipe.unet.modules()) == 0


def test_memory_limit_is_validated_and_ignored_off_the_gpu(tiny_pipe):
    from controlnext_video.memory import free_memory

    with pytest.raises(ValueError, match="positive number of GiB"):
        tiny_pipe.set_memory_limit(0)
    try:
        tiny_pipe.set_memory_limit(1.5)
        assert tiny_pipe.memory_limit == int(1.5 * 2**30)
        assert free_memory(torch.device("cpu"), tiny_pipe.memory_limit) is None  # no plan on the CPU
    finally:
        tiny_pipe.set_memory_limit(None)
    assert tiny_pipe.memory_limit is None
