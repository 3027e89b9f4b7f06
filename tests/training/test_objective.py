"""`denoising_loss` reproduces the official ControlNeXt-SVD v2 training step.

The golden case (`../shared/fixtures/training/case-a`, made by the official training code on the
tiny fixture model) pins the loss and the gradients; the other tests pin the parts the case does
not exercise (loss weights, batches, the hook's lifetime, bad input).
"""

from __future__ import annotations

import json

import pytest
import torch

from controlnext_video import ControlNeXtSVDPipeline
from controlnext_video.training import denoising_loss

from .conftest import loss_inputs

# The bar: loss relative error, and each gradient's max error relative to its own max.
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-3
INPUTS = ("latents", "reference_latents", "image_embeddings", "pose_frames", "sigmas", "noise")


@pytest.fixture(scope="module")
def case(shared_dir):
    from safetensors.torch import load_file

    root = shared_dir / "fixtures" / "training" / "case-a"
    return json.loads((root / "case.json").read_text()), load_file(str(root / "case.safetensors"))


@pytest.fixture(scope="module")
def fixture_pipe(shared_dir):
    pipe = ControlNeXtSVDPipeline.from_pretrained(shared_dir / "fixtures" / "controlnext-svd-tiny")
    pipe.unet.requires_grad_(True)
    pipe.controlnext.requires_grad_(True)
    return pipe


def test_fixture_loss_and_gradients(case, fixture_pipe):
    cfg, tensors = case
    assert cfg["source"]["control_stem"] == "inference"  # the module we render with
    loss = denoising_loss(fixture_pipe, **{k: tensors[k] for k in INPUTS}, loss_weights=None, **cfg["conditioning"])
    assert loss.shape == () and loss.dtype == torch.float32
    expected = tensors["loss"]
    assert abs(loss.item() - expected.item()) <= LOSS_RTOL * abs(expected.item())

    fixture_pipe.unet.zero_grad()
    fixture_pipe.controlnext.zero_grad()
    loss.backward()
    params = {f"unet.{n}": p for n, p in fixture_pipe.unet.named_parameters()}
    params |= {f"controlnext.{n}": p for n, p in fixture_pipe.controlnext.named_parameters()}
    grads = {k.removeprefix("grad."): v for k, v in tensors.items() if k.startswith("grad.")}
    assert len([k for k in grads if k.startswith("controlnext.")]) == len(list(fixture_pipe.controlnext.parameters()))
    assert len([k for k in grads if k.startswith("unet.")]) == 18
    worst = {}
    for name, want in grads.items():
        got = params[name].grad
        assert got is not None, name
        worst[name] = ((got - want).abs().max() / want.abs().max()).item()
    assert max(worst.values()) <= GRAD_RTOL, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


def test_loss_weights_pool_to_latent_size(tiny_pipe):
    """A weight map is average-pooled to the latent size and multiplies the squared error."""
    inputs = loss_inputs()
    batch, frames, _, h, w = inputs["latents"].shape
    with torch.no_grad():
        plain = denoising_loss(tiny_pipe, **inputs, reduction="none")
        constant = denoising_loss(
            tiny_pipe, **inputs, loss_weights=torch.full((batch, frames, 1, 32, 32), 4.2), reduction="none"
        )
        torch.testing.assert_close(constant, 4.2 * plain)
        # Weight 5 on the top-left 8x8 pixels = one latent pixel of weight 5, the rest weight 1.
        weights = torch.ones(batch, frames, 1, 32, 32)
        weights[..., :8, :8] = 5
        spot = torch.zeros(batch, frames, 4, h, w)
        spot[..., 0, 0] = 1
        weighted = denoising_loss(tiny_pipe, **inputs, loss_weights=weights, reduction="none")
    # weighted - plain = 4 * (the squared error at latent pixel (0, 0)) / (F * C * h * w)
    error = _squared_error(tiny_pipe, inputs)
    expected_extra = 4 * (error * spot).flatten(1).sum(1) / (frames * 4 * h * w)
    torch.testing.assert_close(weighted - plain, expected_extra, rtol=1e-4, atol=1e-7)


def _squared_error(pipe, inputs):
    """The weighted squared error per element, from the UNet output (an independent restatement)."""
    from controlnext_video.injection import ControlSignal, control_injection

    sigma = inputs["sigmas"].view(-1, 1, 1, 1, 1)
    noisy = inputs["latents"] + sigma * inputs["noise"]
    frames = noisy.shape[1]
    model_input = torch.cat(
        [noisy / (sigma**2 + 1).sqrt(), inputs["reference_latents"][:, None].repeat(1, frames, 1, 1, 1)], dim=2
    )
    t = 0.25 * inputs["sigmas"].log()
    ids = torch.tensor([[6.0, 127.0, 0.02]]).repeat(noisy.shape[0], 1)
    with torch.no_grad(), control_injection(pipe.unet) as injector:
        injector.signal = ControlSignal(pipe.controlnext(inputs["pose_frames"], t), first_row=0)
        v = pipe.unet(model_input, t, encoder_hidden_states=inputs["image_embeddings"], added_time_ids=ids).sample
    denoised = noisy / (sigma**2 + 1) - sigma / (sigma**2 + 1).sqrt() * v
    return (1 + sigma**2) / sigma**2 * (denoised - inputs["latents"]) ** 2


def test_batch_loss_is_the_mean_of_single_sample_losses(tiny_pipe):
    inputs = loss_inputs()
    with torch.no_grad():
        together = denoising_loss(tiny_pipe, **inputs)
        each = denoising_loss(tiny_pipe, **inputs, reduction="none")
        alone = [denoising_loss(tiny_pipe, **{k: v[i : i + 1] for k, v in inputs.items()}) for i in range(2)]
    assert each.shape == (2,)
    torch.testing.assert_close(together, each.mean())
    torch.testing.assert_close(each, torch.stack(alone), rtol=1e-5, atol=1e-7)


def test_loss_trains_only_through_autograd_and_leaves_no_hook(tiny_pipe):
    tiny_pipe.controlnext.requires_grad_(True)
    loss = denoising_loss(tiny_pipe, **loss_inputs())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_pipe.controlnext.parameters())
    assert not tiny_pipe.unet.down_blocks[0]._forward_hooks


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("sigmas", torch.tensor([1.0]), "sigmas must have shape"),
        ("sigmas", torch.tensor([1.0, 0.0]), "sigmas must be positive"),
        ("reference_latents", torch.zeros(2, 4, 3, 3), "reference_latents must have shape"),
        ("pose_frames", torch.zeros(2, 2, 3, 32, 32), "pose_frames must be"),
        ("image_embeddings", torch.zeros(2, 32), "image_embeddings must be"),
        ("loss_weights", torch.ones(2, 3, 3, 32, 32), "loss_weights must be"),
    ],
)
def test_bad_inputs_are_named(tiny_pipe, name, value, message):
    inputs = loss_inputs()
    inputs[name] = value
    with pytest.raises(ValueError, match=message):
        denoising_loss(tiny_pipe, **inputs)
