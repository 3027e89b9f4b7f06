"""A fine-tuned model directory loads with `from_pretrained` and renders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controlnext_video import ControlNeXtSVDPipeline
from controlnext_video.factory import save_tiny_model
from controlnext_video.training import BatchSettings, TrainingConfig, export_model, train, training_card
from controlnext_video.training.export import base_files

from controlnext_video.training.synthetic import moving_disc_clip


@pytest.mark.parametrize("control_type", ["controlnext", "controlnet"])
def test_fine_tuned_directory_loads_and_renders(tmp_path, control_type):
    """Whatever the control design of the base directory, the trainer trains it and the exported
    directory renders with it (its config names the design)."""
    from storage import ArtifactStore

    base = save_tiny_model(tmp_path / "base", seed=0, control_type=control_type)
    pipe = ControlNeXtSVDPipeline.from_pretrained(base, torch_dtype=torch.float32)
    clips = [moving_disc_clip(12, 48, 0)]
    config = TrainingConfig(
        steps=2, learning_rate=1e-3, warmup_steps=0, mixed_precision="no", gradient_checkpointing=False,
        checkpoint_every=2, data=BatchSettings(height=32, width=32, sample_n_frames=3, frame_interval=2),
    )
    store = ArtifactStore(tmp_path / "store")
    result = train(pipe, clips, config, store=store, prefix="runs/a/checkpoints")
    card = training_card(config, result, base_model=str(base), data={"clip-0.mp4": "0" * 64})
    export_model(pipe, base, store, "runs/a/model", card=card)

    directory = store.local_path("runs/a/model")
    assert (directory / "unet" / "config.json").is_file()
    assert not (directory / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert store.read_json("runs/a/model/training.json")["trainable_parameters"] == result.trainable_parameters
    tuned = ControlNeXtSVDPipeline.from_pretrained(directory, torch_dtype=torch.float32)
    for ours, theirs in ((pipe.unet, tuned.unet), (pipe.controlnext, tuned.controlnext)):
        mine, loaded = ours.state_dict(), theirs.state_dict()
        assert all(torch.equal(mine[k], loaded[k]) for k in mine)
    assert tuned.controlnext.control_type == control_type
    original = ControlNeXtSVDPipeline.from_pretrained(base, torch_dtype=torch.float32).controlnext.state_dict()
    assert any(not torch.equal(original[k], v) for k, v in tuned.controlnext.state_dict().items())

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    poses = clips[0].pose_array[:3, 8:40, 8:40]
    frames = tuned(reference, poses, num_inference_steps=2, window_size=3, overlap=1,
                   generator=torch.Generator().manual_seed(0))
    assert frames.shape == (3, 32, 32, 3) and np.isfinite(frames).all()


def test_base_files_skip_replaced_weights(tmp_path):
    base = save_tiny_model(tmp_path / "base", seed=0)
    (base / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"base unet weights")
    (base / ".cache").mkdir()
    (base / ".cache" / "x").write_text("hidden")
    files = base_files(base)
    assert "unet/config.json" in files and "model_index.json" in files
    assert not any(f.startswith(("controlnext", ".")) for f in files)
    assert [f for f in files if f.startswith("unet/")] == ["unet/config.json"]
    assert any(f.startswith("vae/") for f in files) and any(f.startswith("image_encoder/") for f in files)
