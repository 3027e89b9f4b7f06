"""`save_pretrained` / `from_pretrained`: the diffusers layout round-trips bit for bit, is checked
and fingerprinted like the released layout, and the control module saves and loads on its own."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from controlnext_video import ControlNeXtModel, ControlNeXtSVDPipeline, WeightsError
from controlnext_video.factory import build_tiny_pipeline
from controlnext_video.model_dir import check_model_dir

from .conftest import random_inputs

N, H, W = 5, 64, 64
MODELS = ("unet", "vae", "image_encoder", "controlnext")


def run(pipe, **kwargs):
    ref, poses = random_inputs(N, H, W)
    return pipe(ref, poses, num_inference_steps=2, window_size=4, overlap=1,
                generator=torch.Generator().manual_seed(7), **kwargs)


def public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def assert_same_tensors(a, b):
    for name in MODELS:
        left = dict((*getattr(a, name).named_parameters(), *getattr(a, name).named_buffers()))
        right = dict((*getattr(b, name).named_parameters(), *getattr(b, name).named_buffers()))
        assert left.keys() == right.keys(), name
        for key in left:
            assert left[key].dtype == right[key].dtype and torch.equal(left[key], right[key]), f"{name}.{key}"


def drop_a_key_and_add_one(weights, key: str) -> None:
    """Rewrite a safetensors file without `key` and with an unexpected `extra.weight`."""
    state = load_file(str(weights))
    state.pop(key)
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(weights))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_pipe):
    directory = tmp_path_factory.mktemp("saved") / "pipe"
    tiny_pipe.save_pretrained(directory)
    return directory


def test_saved_layout_is_a_standard_diffusers_pipeline(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "ControlNeXtSVDPipeline"
    assert index["controlnext"] == ["controlnext_video.control", "ControlNeXtModel"]
    assert {"unet", "vae", "image_encoder", "controlnext", "scheduler", "feature_extractor"} <= index.keys()
    for path in ("unet/diffusion_pytorch_model.safetensors", "controlnext/config.json",
                 "controlnext/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "image_encoder/model.safetensors", "scheduler/scheduler_config.json",
                 "feature_extractor/preprocessor_config.json"):
        assert (saved / path).is_file(), path
    assert not (saved / "controlnext-unet.safetensors").exists()


def test_save_then_load_is_bit_exact(saved, tiny_pipe):
    loaded = ControlNeXtSVDPipeline.from_pretrained(saved)
    assert_same_tensors(tiny_pipe, loaded)
    assert public(loaded.controlnext.config) == public(tiny_pipe.controlnext.config)
    assert loaded.feature_extractor.image_mean == tiny_pipe.feature_extractor.image_mean
    # the same seed gives the same pictures (initial noise drawn from the generator)
    assert np.array_equal(run(tiny_pipe), run(loaded))


def test_saved_layout_is_checked_and_fingerprinted(saved, tmp_path):
    files = check_model_dir(saved)
    assert files.layout == "diffusers"
    assert files.unet_weights == saved / "unet" / "diffusion_pytorch_model.safetensors"
    assert files.controlnext_weights == saved / "controlnext" / "diffusion_pytorch_model.safetensors"
    assert files.fingerprint() == check_model_dir(saved).fingerprint()

    copy = shutil.copytree(saved, tmp_path / "copy")
    before = check_model_dir(copy).fingerprint()
    for changed in ("controlnext/diffusion_pytorch_model.safetensors", "controlnext/config.json", "model_index.json"):
        stat = (copy / changed).stat()
        os.utime(copy / changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        after = check_model_dir(copy).fingerprint()
        assert after != before, changed
        before = after


def test_saved_layout_missing_or_damaged_files_are_named(saved, tmp_path):
    d = shutil.copytree(saved, tmp_path / "m")
    (d / "controlnext" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        check_model_dir(d)
    (d / "controlnext" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="controlnext weights not found"):
        ControlNeXtSVDPipeline.from_pretrained(d)
    (d / "controlnext" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="controlnext/config.json is missing"):
        check_model_dir(d)


def test_saved_layout_loads_strictly(saved, tmp_path):
    d = shutil.copytree(saved, tmp_path / "m")
    drop_a_key_and_add_one(d / "unet" / "diffusion_pytorch_model.safetensors", "conv_in.bias")
    with pytest.raises(WeightsError, match=r"conv_in\.bias.*extra\.weight"):
        ControlNeXtSVDPipeline.from_pretrained(d)


def test_fp16_variant_loads_into_fp32(tmp_path):
    half = build_tiny_pipeline(seed=3).to(torch.float16, silence_dtype_warnings=True)
    half.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = ControlNeXtSVDPipeline.from_pretrained(tmp_path / "fp16")
    assert loaded.dtype == torch.float32 and loaded.vae_dtype == torch.float32
    assert check_model_dir(tmp_path / "fp16").layout == "diffusers"
    for name in MODELS:
        expected = getattr(half, name).state_dict()
        for key, value in getattr(loaded, name).state_dict().items():
            assert value.dtype == torch.float32 or not value.is_floating_point()
            assert torch.equal(value, expected[key].to(value.dtype)), f"{name}.{key}"


def test_sharded_save_is_checked_and_loaded(tiny_pipe, tmp_path):
    d = tmp_path / "sharded"
    tiny_pipe.save_pretrained(d, max_shard_size="2MB")
    shards = sorted((d / "unet").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1 and (d / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    files = check_model_dir(d)
    before = files.fingerprint()
    loaded = ControlNeXtSVDPipeline.from_pretrained(d)
    assert_same_tensors(tiny_pipe, loaded)
    stat = shards[-1].stat()
    os.utime(shards[-1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert check_model_dir(d).fingerprint() != before
    shards[-1].unlink()
    with pytest.raises(FileNotFoundError, match="shard"):
        check_model_dir(d)


def test_released_layout_converts_to_the_saved_one(tiny_model_dir, tmp_path):
    released = ControlNeXtSVDPipeline.from_pretrained(tiny_model_dir)
    assert check_model_dir(tiny_model_dir).layout == "released"
    released.save_pretrained(tmp_path / "saved")
    assert_same_tensors(released, ControlNeXtSVDPipeline.from_pretrained(tmp_path / "saved"))


def test_control_module_saves_and_loads_on_its_own(tiny_pipe, tmp_path):
    tuned = ControlNeXtModel.for_unet(tiny_pipe.unet.config)
    tuned.load_state_dict(tiny_pipe.controlnext.state_dict())
    with torch.no_grad():
        tuned.mid_convs[1].weight.add_(0.01)  # a fine-tuning step
    tuned.save_pretrained(tmp_path / "tuned")
    loaded = ControlNeXtModel.from_pretrained(tmp_path / "tuned")
    assert public(loaded.config) == public(tuned.config) and loaded.config.out_channels == 32
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tuned.state_dict().items())
    control = torch.rand(1, 2, 3, 32, 32)
    assert torch.equal(loaded(control, 10.0), tuned(control, 10.0))


def test_control_module_loading_is_strict(tiny_pipe, tmp_path):
    tiny_pipe.controlnext.save_pretrained(tmp_path / "control")
    drop_a_key_and_add_one(tmp_path / "control" / "diffusion_pytorch_model.safetensors", "mid_convs.1.bias")
    with pytest.raises(WeightsError, match=r"1 missing keys: mid_convs\.1\.bias; 1 unexpected keys: extra\.weight"):
        ControlNeXtModel.from_pretrained(tmp_path / "control")
