"""Control designs behind one interface: ControlNeXt (default) and a ControlNet branch.

The ControlNet branch starts as an exact no-op (zero convolutions); ControlNeXt's features change
the output from the first step. Both learn under the training objective, save and load with the
model directory, and render through the pipeline chosen by the directory's control config.
"""

from __future__ import annotations

import json

import pytest
import torch

from controlnext_video import ControlNeXtSVDPipeline
from controlnext_video.controlnet import SVDControlNetModel
from controlnext_video.controls import control_class, new_control
from controlnext_video.factory import build_tiny_pipeline, save_tiny_model
from controlnext_video.model_dir import CONTROL_CONFIG_FILE, check_model_dir
from controlnext_video.training import denoising_loss

from .conftest import initial_latents, random_inputs

N, H, W = 3, 32, 32
BASE = dict(num_inference_steps=2, window_size=3, overlap=1, output_type="latent")
# The fixed-batch training test: steps, learning rate, and the fraction of the first loss to reach
# (measured: ControlNeXt 1.193 -> 1.063, ControlNet 1.188 -> 0.243 in 40 steps).
TRAIN_STEPS = 40
TRAIN_LR = 3e-3
LOSS_RATIO = 0.95


def hooks_on(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def render(pipe, **kwargs):
    ref, poses = random_inputs(N, H, W)
    args = dict(BASE, latents=initial_latents(pipe, N, H, W), generator=torch.Generator().manual_seed(0))
    return pipe(ref, poses, **{**args, **kwargs})


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models run fastest on one thread; on a busy machine two threads spin-wait (20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def controlnet_pipe():
    return build_tiny_pipeline(seed=0, control_type="controlnet")


@pytest.fixture(scope="module")
def controlnext_pipe():
    return build_tiny_pipeline(seed=0)


def test_new_controlnet_is_an_exact_no_op(controlnet_pipe, controlnext_pipe):
    """A fresh ControlNet branch renders exactly what the UNet renders with no control (the
    ControlNeXt pipeline built from the same seed, at control scale 0, is that UNet)."""
    base = render(controlnext_pipe, control_scale=0.0)
    assert torch.equal(render(controlnet_pipe), base)
    # and ControlNeXt does not need zero initialisation to start: its first output differs
    assert (render(controlnext_pipe) - base).abs().max().item() > 1e-3


def test_controlnet_branch_copies_the_unet_and_starts_at_zero(controlnet_pipe):
    branch, unet = controlnet_pipe.controlnext, controlnet_pipe.unet
    assert torch.equal(branch.down_blocks[1].resnets[0].spatial_res_block.conv1.weight,
                       unet.down_blocks[1].resnets[0].spatial_res_block.conv1.weight)
    zeros = [*branch.controlnet_down_blocks, branch.controlnet_mid_block, branch.controlnet_cond_embedding.conv_out]
    assert all(not p.any() for conv in zeros for p in conv.parameters())
    # one zero convolution per skip connection the up blocks consume
    skips = sum(len(b.resnets) for b in unet.up_blocks)
    assert len(branch.controlnet_down_blocks) == skips


def test_controlnet_adds_to_skips_and_mid_only_for_control_rows(controlnet_pipe):
    """With non-zero convolutions the branch changes the conditional rows only (the guidance
    batch's unconditional half keeps the plain UNet's output), and leaves no hook behind."""
    unet = controlnet_pipe.unet
    branch = SVDControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    torch.manual_seed(0)
    for conv in [*branch.controlnet_down_blocks, branch.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.1)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 8, 8, 8, generator=gen)
    embeddings = torch.randn(2, 1, 32, generator=gen)
    time_ids = torch.tensor([[6.0, 128.0, 0.02]]).expand(2, -1)
    control = torch.rand(1, 3, 3, 64, 64, generator=gen)
    t = torch.tensor(0.5)
    before = hooks_on(unet)
    with torch.no_grad():
        plain = unet(sample, t, encoder_hidden_states=embeddings, added_time_ids=time_ids).sample
        with branch.injection(unet) as injector:
            assert hooks_on(unet) > before
            injector.signal = branch.signal(control, t, first_row=3)
            controlled = unet(sample, t, encoder_hidden_states=embeddings, added_time_ids=time_ids).sample
    assert hooks_on(unet) == before
    assert torch.equal(controlled[0], plain[0])
    assert (controlled[1] - plain[1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("control_type", ["controlnext", "controlnet"])  # multi: test_multicontrol.py
def test_each_design_learns_a_fixed_batch(control_type):
    """The training objective's loss falls when the control module alone trains on one batch."""
    pipe = build_tiny_pipeline(seed=0, control_type=control_type)
    gen = torch.Generator().manual_seed(0)
    batch, frames, size = 1, 2, 32
    inputs = dict(
        latents=torch.randn(batch, frames, 4, size // 8, size // 8, generator=gen),
        reference_latents=torch.randn(batch, 4, size // 8, size // 8, generator=gen),
        image_embeddings=torch.randn(batch, 1, 32, generator=gen),
        pose_frames=torch.rand(batch, frames, 3, size, size, generator=gen),
        sigmas=torch.tensor([1.0]),
        noise=torch.randn(batch, frames, 4, size // 8, size // 8, generator=gen),
    )
    params = list(pipe.controlnext.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=TRAIN_LR)
    losses = []
    for _ in range(TRAIN_STEPS):
        loss = denoising_loss(pipe, **inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < LOSS_RATIO * losses[0], losses


def test_design_is_chosen_by_the_model_directory(tmp_path):
    """A released-layout directory with a ControlNet config loads a ControlNet branch; without
    a config it is ControlNeXt, as released; a saved pipeline keeps its design too."""
    model = save_tiny_model(tmp_path / "net", seed=0, control_type="controlnet")
    assert json.loads((model / CONTROL_CONFIG_FILE).read_text())["_class_name"] == "SVDControlNetModel"
    assert model / CONTROL_CONFIG_FILE in check_model_dir(model).configs
    pipe = ControlNeXtSVDPipeline.from_pretrained(model)
    assert isinstance(pipe.controlnext, SVDControlNetModel)
    plain = ControlNeXtSVDPipeline.from_pretrained(save_tiny_model(tmp_path / "next", seed=0))
    assert plain.controlnext.control_type == "controlnext"
    pipe.save_pretrained(tmp_path / "saved")
    again = ControlNeXtSVDPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(again.controlnext, SVDControlNetModel)
    for name, tensor in pipe.controlnext.state_dict().items():
        assert torch.equal(tensor, again.controlnext.state_dict()[name]), name


def test_unknown_design_and_type_are_refused(controlnext_pipe):
    with pytest.raises(ValueError, match="unknown control module class"):
        control_class({"_class_name": "Nope"})
    with pytest.raises(ValueError, match="control_type must be one of"):
        new_control("t2i-adapter", controlnext_pipe.unet)
