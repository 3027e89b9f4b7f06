"""The multi-condition control module: presence from the pictures, condition dropout, training,
and renders from any subset of its conditions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controlnext_video import ControlNeXtSVDPipeline
from controlnext_video.factory import build_tiny_pipeline, save_tiny_model
from controlnext_video.multicontrol import MultiConditionControlNeXtModel
from controlnext_video.training import denoising_loss, drop_conditions

from .conftest import initial_latents

N, H, W = 3, 32, 32
TRAIN_STEPS = 30
TRAIN_LR = 3e-3
DROPOUT = 0.5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def only(control: torch.Tensor, keep: list[int], groups: int = 3) -> torch.Tensor:
    """`control` with the condition groups not in `keep` blacked out. Shapes: `(..., 3K, H, W)`."""
    mask = torch.zeros(groups)
    mask[keep] = 1
    return control * mask.repeat_interleave(3).view(*([1] * (control.ndim - 3)), -1, 1, 1)


def test_presence_and_condition_dropout():
    module = MultiConditionControlNeXtModel(out_channels=32)
    control = torch.rand(4, 2, 9, 16, 16)
    assert module.presence(only(control, [0, 2])).tolist() == [[1.0, 0.0, 1.0]] * 4
    gen = torch.Generator().manual_seed(0)
    dropped = drop_conditions(control, 0.9, gen)
    present = module.presence(dropped)
    assert (present.sum(dim=1) >= 1).all() and present.sum() < 12  # at least one kept, most dropped
    for b in range(4):  # whole pictures kept or blacked out
        for k in range(3):
            group = dropped[b, :, 3 * k : 3 * k + 3]
            assert torch.equal(group, control[b, :, 3 * k : 3 * k + 3]) or not group.any()
    with pytest.raises(ValueError, match="takes 9"):
        module(torch.rand(1, 2, 3, 16, 16), 0.5)


def test_trained_with_dropout_renders_with_each_condition_and_all(tmp_path):
    pipe = build_tiny_pipeline(seed=0, control_type="controlnext-multi")
    gen = torch.Generator().manual_seed(0)
    batch, frames, size = 2, 2, 32
    inputs = dict(
        latents=torch.randn(batch, frames, 4, size // 8, size // 8, generator=gen),
        reference_latents=torch.randn(batch, 4, size // 8, size // 8, generator=gen),
        image_embeddings=torch.randn(batch, 1, 32, generator=gen),
        sigmas=torch.tensor([1.0, 2.0]),
        noise=torch.randn(batch, frames, 4, size // 8, size // 8, generator=gen),
    )
    control = torch.rand(batch, frames, 9, size, size, generator=gen)
    with torch.no_grad():
        before = denoising_loss(pipe, pose_frames=control, **inputs).item()
    params = list(pipe.controlnext.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=TRAIN_LR)
    for _ in range(TRAIN_STEPS):
        loss = denoising_loss(pipe, pose_frames=drop_conditions(control, DROPOUT, gen), **inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pipe.controlnext.requires_grad_(False)
    with torch.no_grad():
        after = denoising_loss(pipe, pose_frames=control, **inputs).item()
    assert after < before

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    frames = rng.integers(0, 256, (N, H, W, 9), dtype=np.uint8)
    args = dict(num_inference_steps=2, window_size=3, overlap=1, output_type="latent")

    def render(pictures, **kwargs):
        return pipe(reference, pictures, latents=initial_latents(pipe, N, H, W),
                    generator=torch.Generator().manual_seed(0), **args, **kwargs)

    plain = render(frames, control_scale=0.0)
    outputs = {}
    for name, keep in (("pose", [0]), ("edges", [1]), ("mask", [2]), ("all", [0, 1, 2])):
        pictures = frames * np.isin(np.arange(9) // 3, keep).astype(np.uint8)  # channels last here
        outputs[name] = render(pictures)
        assert torch.isfinite(outputs[name]).all() and (outputs[name] - plain).abs().max() > 1e-3, name
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (outputs[a] - outputs[b]).abs().max() > 1e-4, (a, b)
    with pytest.raises(ValueError, match=r"3 RGB pictures stacked on the channel axis \(H, W, 9\)"):
        render(frames[..., :3])


def test_multi_condition_model_directory_loads(tmp_path):
    model = save_tiny_model(tmp_path / "multi", seed=0, control_type="controlnext-multi")
    pipe = ControlNeXtSVDPipeline.from_pretrained(model)
    assert isinstance(pipe.controlnext, MultiConditionControlNeXtModel)
    assert pipe.controlnext.config.condition_types == ["pose", "edges", "mask"]


def stacked_clip(seed: int):
    """A synthetic clip whose control pictures stack pose, edges and a brightness mask."""
    from pose.conditions import canny_edges, render_map

    from controlnext_video.training import ArrayClip, moving_disc_clip

    clip = moving_disc_clip(12, 48, seed)
    edges = np.stack([render_map(canny_edges(f)) for f in clip.frame_array])
    mask = np.stack([render_map(np.where(f.max(axis=2) > 150, 255, 0).astype(np.uint8)) for f in clip.frame_array])
    return ArrayClip(clip.frame_array, np.concatenate([clip.pose_array, edges, mask], axis=3), clip.hands)


def test_the_trainer_trains_a_multi_condition_module_with_condition_dropout(tmp_path):
    from storage import ArtifactStore

    from controlnext_video.training import BatchSettings, TrainingConfig, make_batch, train

    pipe = build_tiny_pipeline(seed=0, control_type="controlnext-multi")
    clips = [stacked_clip(0), stacked_clip(1)]
    data = BatchSettings(height=32, width=32, sample_n_frames=3, frame_interval=2, condition_dropout=0.6)
    batch = make_batch(pipe, clips, data, seed=0, step=0, indices=range(4), global_batch_size=4)
    present = pipe.controlnext.presence(batch.pose_frames)
    assert batch.pose_frames.shape[2] == 9 and (present.sum(dim=1) >= 1).all() and present.sum() < 12
    config = TrainingConfig(steps=3, learning_rate=1e-3, warmup_steps=0, unet_training="none", mixed_precision="no",
                            gradient_checkpointing=False, checkpoint_every=3, data=data)
    before = {k: v.clone() for k, v in pipe.controlnext.state_dict().items()}
    result = train(pipe, clips, config, store=ArtifactStore(tmp_path), prefix="run")
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert any(not torch.equal(before[k], v) for k, v in pipe.controlnext.state_dict().items())
