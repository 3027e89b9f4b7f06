"""Loading weights: formats, dtypes, and clear errors for files that do not fit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from controlnext_video import ControlNeXtSVDPipeline, WeightsError
from controlnext_video.factory import save_tiny_model

from .conftest import initial_latents, random_inputs


def run(pipe, n=5, h=64, w=64):
    ref, poses = random_inputs(n, h, w)
    return pipe(ref, poses, latents=initial_latents(pipe, n, h, w), num_inference_steps=2, window_size=4, overlap=1,
                generator=torch.Generator().manual_seed(0), output_type="latent")


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_fp16_safetensors_into_fp32_and_bf16(tiny_model_dir):
    fp32 = ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir)
    assert fp32.dtype == torch.float32 and fp32.controlnext.dtype == torch.float32
    assert fp32.vae_dtype == torch.float32 and fp32.image_encoder.dtype == torch.float32
    stored = load_file(str(tiny_model_dir / "controlnext.safetensors"))
    assert all(v.dtype == torch.float16 for v in stored.values())
    key = "mid_convs.1.weight"
    assert torch.equal(fp32.controlnext.state_dict()[key], stored[key].float())
    bf16 = ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    out32, out16 = run(fp32), run(bf16)
    assert torch.isfinite(out16).all()
    # bf16 keeps 8 bits of mantissa: bounded, not bit-exact, agreement with fp32
    assert (out16 - out32).abs().max().item() < 0.1 * out32.abs().max().item()


def test_fp16_pipeline_keeps_vae_in_fp32(tiny_model_dir):
    fp16 = ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.float16)
    assert fp16.dtype == torch.float16
    assert fp16.vae_dtype == torch.float32  # force_upcast in the VAE config


def test_bin_files_load_like_safetensors(tmp_path, tiny_model_dir):
    bin_dir = save_tiny_model(tmp_path / "bin", seed=0, weights_format="bin")
    assert (bin_dir / "controlnext-unet.bin").is_file() and not (bin_dir / "controlnext.safetensors").exists()
    a = ControlNeXtSVDPipeline.from_pretrained(bin_dir)
    b = ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir)
    assert torch.equal(run(a), run(b))


def test_explicit_weight_paths(tmp_path, tiny_model_dir):
    d = copy_model(tiny_model_dir, tmp_path / "m")
    (d / "controlnext-unet.safetensors").rename(tmp_path / "elsewhere-unet.safetensors")
    (d / "controlnext.safetensors").rename(tmp_path / "elsewhere-control.safetensors")
    with pytest.raises(FileNotFoundError, match="controlnext-unet"):
        ControlNeXtSVDPipeline.from_pretrained(d)
    pipe = ControlNeXtSVDPipeline.from_pretrained(
        d, unet_weights=tmp_path / "elsewhere-unet.safetensors",
        controlnext_weights=tmp_path / "elsewhere-control.safetensors",
    )
    assert pipe.unet.conv_in.weight.dtype == torch.float32


def test_base_unet_weights_are_never_read(tmp_path, tiny_model_dir):
    d = copy_model(tiny_model_dir, tmp_path / "m")
    # a corrupt base UNet weight file would fail any attempt to read it
    (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    ControlNeXtSVDPipeline.from_pretrained(d)


def test_missing_files_are_named(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        ControlNeXtSVDPipeline.from_pretrained(tmp_path / "nope")
    d = copy_model(tiny_model_dir, tmp_path / "m")
    (d / "controlnext.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"controlnext\.safetensors or controlnext\.bin"):
        ControlNeXtSVDPipeline.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="does-not-exist.bin"):
        ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, controlnext_weights=tmp_path / "does-not-exist.bin")
    (d / "vae" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="vae/config.json"):
        ControlNeXtSVDPipeline.from_pretrained(d)


def test_wrong_key_set_names_the_keys(tmp_path, tiny_model_dir):
    state = load_file(str(tiny_model_dir / "controlnext.safetensors"))
    state.pop("mid_convs.1.bias")
    state["extra.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsError) as err:
        ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, controlnext_weights=bad)
    message = str(err.value)
    assert "mid_convs.1.bias" in message and "extra.weight" in message and "bad.safetensors" in message
    assert "missing" in message and "unexpected" in message


def test_shape_mismatch_names_the_key(tmp_path, tiny_model_dir):
    state = load_file(str(tiny_model_dir / "controlnext-unet.safetensors"))
    state["conv_in.weight"] = torch.zeros(3, 3, 3, 3, dtype=torch.float16)
    bad = tmp_path / "bad-unet.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsError, match=r"conv_in\.weight \(file \(3, 3, 3, 3\)"):
        ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, unet_weights=bad)


def test_control_module_for_another_unet_width_is_refused(shared_dir, tiny_model_dir):
    """The fixture's control module projects to 320 channels; the tiny model's UNet starts at 32."""
    other = shared_dir / "fixtures" / "controlnext-svd-tiny" / "controlnext.safetensors"
    with pytest.raises(WeightsError, match=r"mid_convs\.1\.weight"):
        ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, controlnext_weights=other)


def test_corrupt_and_unsafe_files(tmp_path, tiny_model_dir):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="corrupt.safetensors"):
        ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, controlnext_weights=corrupt)

    class Payload:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    unsafe = tmp_path / "unsafe.bin"
    torch.save({"x": Payload()}, unsafe)
    with pytest.raises(WeightsError, match="unsafe.bin"):
        ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, controlnext_weights=unsafe)
    odd = tmp_path / "weights.npz"
    np.savez(odd, a=np.zeros(2))
    with pytest.raises(WeightsError, match="unknown extension"):
        ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir, controlnext_weights=odd)
