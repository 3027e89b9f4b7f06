"""The CUDA fast path on the tiny model: agreement with the fp32 CPU path, offload, the memory cap,
and a real (not simulated) out-of-memory error taking the smaller-plan fallback.

Opt in with `pytest -m gpu` on a machine with a CUDA GPU; CI has none, so these are deselected
there (and skip when selected without a GPU).
"""

from __future__ import annotations

import pytest
import torch

from .conftest import initial_latents, random_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

N, H, W = 9, 64, 64
KW = dict(num_inference_steps=3, window_size=4, overlap=1, output_type="latent")


def run(pipe, **kwargs):
    ref, poses = random_inputs(N, H, W)
    latents = initial_latents(pipe, N, H, W)
    return pipe(ref, poses, latents=latents, generator=torch.Generator().manual_seed(0), **{**KW, **kwargs}).cpu()


@pytest.fixture(scope="module")
def cpu_result(tiny_model_dir):
    from controlnext_video import ControlNeXtSVDPipeline

    return run(ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir))


def load(tiny_model_dir, dtype=torch.float32):
    from controlnext_video import ControlNeXtSVDPipeline

    return ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, torch_dtype=dtype, device="cuda")


def test_fp32_on_cuda_matches_the_cpu(tiny_model_dir, cpu_result):
    got = run(load(tiny_model_dir))
    assert (got - cpu_result).abs().max().item() < 1e-3  # the parity tolerance


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fast_path_agrees_with_fp32(tiny_model_dir, cpu_result, dtype):
    pipe = load(tiny_model_dir, dtype)
    pipe.enable_channels_last()
    pipe.windows_per_batch = 3  # all three windows in one UNet call
    got = run(pipe)
    assert torch.isfinite(got).all()
    if dtype == torch.float16:
        assert pipe.vae_dtype == torch.float32
    scale = cpu_result.abs().max().item()
    assert (got - cpu_result).abs().max().item() < 0.1 * scale


def test_auto_plan_batches_windows_and_matches_one_at_a_time(tiny_model_dir):
    from controlnext_video.windows import plan_windows

    pipe = load(tiny_model_dir)
    assert pipe.batch_plan(H, W, plan_windows(N, 4, 1)) == 3  # plenty of free memory: all windows
    batched = run(pipe)
    pipe.windows_per_batch = 1
    single = run(pipe)
    assert (batched - single).abs().max().item() < 1e-3


def test_cpu_offload_on_cuda_gives_the_same_result(tiny_model_dir):
    pipe = load(tiny_model_dir)
    plain = run(pipe)
    pipe.enable_model_cpu_offload(device="cuda")
    assert next(pipe.unet.parameters()).device.type == "cpu"
    offloaded = run(pipe)
    assert next(pipe.unet.parameters()).device.type == "cpu"  # moved back after the call
    assert (plain - offloaded).abs().max().item() < 1e-5


def peak_reserved(fn):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_reserved()


def test_memory_cap_bounds_the_plan_and_a_real_oom_takes_the_fallback(tiny_model_dir):
    from controlnext_video.windows import plan_windows

    size = 256  # big enough latents for the batch size to show in the allocator's reserved memory
    ref, poses = random_inputs(N, size, size)
    pipe = load(tiny_model_dir)
    latents = torch.randn(pipe.latent_shape(N, size, size), generator=torch.Generator().manual_seed(1))
    plan = plan_windows(N, 3, 1)
    kwargs = dict(KW, window_size=3, overlap=1, height=size, width=size)

    def call(windows):
        pipe.windows_per_batch = windows
        return pipe(ref, poses, latents=latents, generator=torch.Generator().manual_seed(0), **kwargs).cpu()

    single, peak_single = peak_reserved(lambda: call(1))
    _, peak_all = peak_reserved(lambda: call(len(plan.windows)))
    if peak_all - peak_single < 8 * 2**20:
        pytest.skip(f"batching adds too little memory to test a cap ({peak_single} vs {peak_all} bytes)")
    try:
        # A cap between the two peaks: the automatic plan stays below the full batch...
        pipe.set_memory_limit((peak_single + peak_all) / 2 / 2**30)
        pipe.windows_per_batch = None
        torch.cuda.empty_cache()
        assert pipe.batch_plan(size, size, plan) < len(plan.windows)
        # ...and a forced full batch meets a genuine CUDA out-of-memory error, halves, and finishes
        # with the same result.
        with pytest.warns(RuntimeWarning, match="out of memory"):
            got, _ = peak_reserved(lambda: call(len(plan.windows)))
        assert (got - single).abs().max().item() < 1e-3
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        pipe.set_memory_limit(None)
