"""Pipeline behaviour: control effect, hook hygiene, argument checks, outputs and options."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from controlnext_video.injection import CONTROL_STRENGTH, ControlSignal, control_injection, cross_normalize

from .conftest import initial_latents, random_inputs

N, H, W = 6, 64, 64
BASE = dict(num_inference_steps=2, window_size=4, overlap=1)


def hooks_on(unet) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())


def call(pipe, **kwargs):
    ref, poses = random_inputs(N, H, W)
    args = dict(BASE, latents=initial_latents(pipe, N, H, W), generator=torch.Generator().manual_seed(0))
    args.update(kwargs)
    return pipe(args.pop("reference", ref), args.pop("poses", poses), **args)


def test_control_changes_the_output(tiny_pipe):
    with_control = call(tiny_pipe, output_type="latent")
    without = call(tiny_pipe, output_type="latent", control_scale=0.0)
    assert (with_control - without).abs().max().item() > 1e-3
    other_poses = random_inputs(N, H, W, seed=9)[1][::-1].copy()
    moved = call(tiny_pipe, output_type="latent", poses=other_poses)
    assert (with_control - moved).abs().max().item() > 1e-3


def test_control_scale_zero_is_the_plain_unet(tiny_pipe):
    """Scale 0 adds nothing: the result equals the UNet with no hook at all."""
    without = call(tiny_pipe, output_type="latent", control_scale=0.0)
    calls = []
    handle = tiny_pipe.unet.down_blocks[0].register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        again = call(tiny_pipe, output_type="latent", control_scale=0.0)
    finally:
        handle.remove()
    assert calls and torch.equal(without, again)


def test_no_hook_left_after_call_or_error(tiny_pipe):
    before = hooks_on(tiny_pipe.unet)
    call(tiny_pipe, output_type="latent")
    assert hooks_on(tiny_pipe.unet) == before

    def explode(pipe, step, timestep, callback_kwargs):
        assert hooks_on(tiny_pipe.unet) == before + 1  # the hook is live during the call
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        call(tiny_pipe, output_type="latent", callback_on_step_end=explode)
    assert hooks_on(tiny_pipe.unet) == before


def test_injection_leaves_residuals_untouched(tiny_pipe):
    """The block's residual outputs (skip connections) keep the pre-control hidden states."""
    block = tiny_pipe.unet.down_blocks[0]
    hidden = torch.randn(4, 32, 8, 8)
    residual = hidden  # the block's last residual is its output tensor itself
    features = torch.randn(2, 32, 7, 7)
    with control_injection(tiny_pipe.unet) as injector:
        injector.signal = ControlSignal(features, first_row=2, scale=1.5)
        out_hidden, out_res = injector(block, (), (hidden, (residual,)))
    assert out_res[0] is residual and torch.equal(residual, hidden)
    assert torch.equal(out_hidden[:2], hidden[:2])
    expected = hidden[2:] + torch.nn.functional.adaptive_avg_pool2d(
        cross_normalize(features, hidden[2:]), (8, 8)) * 1.5 * CONTROL_STRENGTH
    assert torch.allclose(out_hidden[2:], expected, atol=1e-6)


def test_cross_normalize_statistics():
    control = torch.randn(3, 8, 5, 5) * 4 + 2
    hidden = torch.randn(3, 8, 6, 6) * 0.5 - 1
    out = cross_normalize(control, hidden)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), hidden.mean(dim=(1, 2, 3)), atol=1e-5)
    assert torch.allclose(out.std(dim=(1, 2, 3)), hidden.std(dim=(1, 2, 3)), atol=1e-3)


@pytest.fixture
def guarded_pipe(tiny_pipe):
    """The tiny pipeline with every model refusing to run: argument errors must come first."""
    def refuse(module, args):
        raise AssertionError(f"model work started: {type(module).__name__}")

    handles = [m.register_forward_pre_hook(refuse) for m in
               (tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.image_encoder, tiny_pipe.controlnext)]
    yield tiny_pipe
    for h in handles:
        h.remove()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(overlap=4), r"overlap \(4\) must be smaller than window_size \(4\)"),
        (dict(overlap=0), "overlap must be at least 1"),
        (dict(height=60), "height must be a positive multiple of 8"),
        (dict(width=0), "width must be a positive multiple of 8"),
        (dict(height=72), "reference is 64x64"),
        (dict(poses=[]), "poses is empty"),
        (dict(poses=None), "poses is empty"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(decode_chunk_size=0), "decode_chunk_size"),
        (dict(window_size=0), "window_size"),
        (dict(min_guidance_scale=float("nan")), "min_guidance_scale"),
        (dict(noise_aug_strength=-0.1), "noise_aug_strength"),
        (dict(output_type="pil"), "output_type"),
        (dict(reference=np.zeros((64, 64), np.uint8)), "reference must be an RGB image"),
        (dict(latents=torch.zeros(1, N + 1, 4, 8, 8)), "latents must have shape"),
        (dict(callback_on_step_end_tensor_inputs=["image_latents"]), "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_arguments_fail_before_model_work(guarded_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        call(guarded_pipe, **kwargs)


def test_pose_count_and_size_mismatch(guarded_pipe):
    ref, poses = random_inputs(N, H, W)
    bad = list(poses)
    bad[3] = np.zeros((H, W + 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"poses\[3\] is 72x64"):
        guarded_pipe(ref, bad, **BASE)
    with pytest.raises(ValueError, match="latents must have shape"):
        guarded_pipe(ref, poses[:4], latents=initial_latents(guarded_pipe, N, H, W), **BASE)
    with pytest.raises(ValueError, match=r"poses\[1\] has float values outside"):
        guarded_pipe(ref, [poses[0], np.full((H, W, 3), 2.0)], **BASE)


def test_inputs_in_every_format_agree(tiny_pipe):
    from PIL import Image

    ref, poses = random_inputs(N, H, W)
    a = call(tiny_pipe, output_type="latent", reference=ref, poses=poses)
    b = call(tiny_pipe, output_type="latent", reference=Image.fromarray(ref),
             poses=[Image.fromarray(p) for p in poses])
    c = call(tiny_pipe, output_type="latent", reference=torch.from_numpy(ref).permute(2, 0, 1).float() / 255,
             poses=torch.from_numpy(poses).float() / 255)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_frames_output_and_streaming_decode(tiny_pipe):
    latents = call(tiny_pipe, output_type="latent")
    frames = call(tiny_pipe)
    assert frames.shape == (N, H, W, 3) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    chunks = list(tiny_pipe.decode_latents(latents, 2))
    assert [c.shape[0] for c in chunks] == [2, 2, 2]
    assert np.array_equal(np.concatenate(chunks), frames)
    # the temporal decoder mixes frames within a chunk: the chunk size matters
    assert not np.allclose(np.concatenate(list(tiny_pipe.decode_latents(latents, 3))), frames, atol=1e-6)


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(tiny_pipe):
    seen = []

    def record(pipe, step, timestep, callback_kwargs):
        seen.append((step, timestep.item(), callback_kwargs["latents"].shape, pipe.num_timesteps))
        return {}

    plain = call(tiny_pipe, output_type="latent", num_inference_steps=3)
    observed = call(tiny_pipe, output_type="latent", num_inference_steps=3, callback_on_step_end=record)
    scheduler = type(tiny_pipe.scheduler).from_config(tiny_pipe.scheduler.config)
    scheduler.set_timesteps(3)
    assert seen == [(i, t.item(), (1, N, 4, 8, 8), 3) for i, t in enumerate(scheduler.timesteps)]
    assert torch.equal(plain, observed)  # a callback that returns nothing changes nothing

    def zero_at_last_step(pipe, step, timestep, callback_kwargs):
        last = step == pipe.num_timesteps - 1
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if last else callback_kwargs

    assert not call(tiny_pipe, output_type="latent", num_inference_steps=3, callback_on_step_end=zero_at_last_step).any()


def test_pipeline_callback_objects_are_accepted(tiny_pipe):
    from diffusers.callbacks import PipelineCallback

    class CountSteps(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            steps.append(step_index)
            return callback_kwargs

    steps = []
    call(tiny_pipe, output_type="latent", callback_on_step_end=CountSteps())
    assert steps == [0, 1]


def test_standard_progress_bar(tiny_pipe):
    out = io.StringIO()
    try:
        tiny_pipe.set_progress_bar_config(file=out, ascii=True)
        call(tiny_pipe, output_type="latent", num_inference_steps=3)
    finally:
        tiny_pipe.set_progress_bar_config()
    assert "3/3" in out.getvalue()


def test_conditioning_arguments_are_honoured(tiny_pipe):
    base = call(tiny_pipe, output_type="latent")
    for change in (dict(fps_id=10), dict(motion_bucket_id=60), dict(noise_aug_strength=0.2),
                   dict(min_guidance_scale=1.0), dict(num_inference_steps=3)):
        assert not torch.equal(call(tiny_pipe, output_type="latent", **change), base), change


def test_batched_windows_match_one_at_a_time(tiny_pipe):
    single = call(tiny_pipe, output_type="latent", window_size=3, overlap=1)
    try:
        tiny_pipe.windows_per_batch = 3
        batched = call(tiny_pipe, output_type="latent", window_size=3, overlap=1)
    finally:
        tiny_pipe.windows_per_batch = None
    assert (single - batched).abs().max().item() < 1e-3  # the parity tolerance: batching reorders float sums


def test_uses_scaled_dot_product_attention(tiny_pipe):
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = tiny_pipe.unet.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())


def test_cpu_offload_gives_the_same_result(tiny_pipe):
    """diffusers' model offload (its hooks run on the CPU too) leaves the control hook working."""
    plain = call(tiny_pipe, output_type="latent")
    before = hooks_on(tiny_pipe.unet)
    try:
        tiny_pipe.enable_model_cpu_offload(device="cpu")
        offloaded = call(tiny_pipe, output_type="latent")
        frames = call(tiny_pipe)
    finally:
        tiny_pipe.remove_all_hooks()
        tiny_pipe.to("cpu")
    assert torch.equal(plain, offloaded)
    assert np.array_equal(frames, call(tiny_pipe))
    assert hooks_on(tiny_pipe.unet) == before


def test_antialiased_resize_matches_svd_preprocessing():
    """Our resize equals the one diffusers' SVD pipeline applies before CLIP (its private helper,
    used here only as the oracle)."""
    svd = pytest.importorskip("diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion")
    oracle = getattr(svd, "_resize_with_antialiasing", None)
    if oracle is None:
        pytest.skip("this diffusers version has no SVD resize helper to compare with")
    from controlnext_video.pipeline import resize_antialiased

    images = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for size in ((224, 224), (48, 80), (96, 160)):
        assert torch.equal(resize_antialiased(images, size), oracle(images, size)), size
