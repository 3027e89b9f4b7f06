"""The control module saves and loads on its own (`save_pretrained` / `from_pretrained`), strictly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from controlnext_video import ControlNeXtModel, WeightsError


def public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def drop_a_key_and_add_one(weights, key: str) -> None:
    """Rewrite a safetensors file without `key` and with an unexpected `extra.weight`."""
    state = load_file(str(weights))
    state.pop(key)
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(weights))


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
