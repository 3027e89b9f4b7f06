"""Control designs behind one interface, chosen by the control module's config.

Every control module is a diffusers model (`ModelMixin`, `ConfigMixin`: `save_pretrained`,
`from_pretrained`) with:
- `control_type`, its name in `CONTROL_TYPES`;
- `signal(control, timestep, first_row=, scale=)`: the control for the next UNet call, for the
  UNet rows from `first_row` (classifier-free guidance controls only the conditional half);
- `injection(unet)`: a context manager installing the hooks that apply a signal to the stock
  UNet; set `injector.signal` before each call, None for no control.

Designs:
- "controlnext": ControlNeXt's light encoder, its features added after the first down block with
  cross normalization (`control.ControlNeXtModel`, the released weights' design; the default);
- "controlnet": a trainable copy of the UNet's down path and mid block whose zero-initialised
  1x1 convolutions add to every skip connection and the mid block output
  (`controlnet.SVDControlNetModel`);
- "controlnext-multi": several conditions (pose, edges, mask) through one stem each and a shared,
  condition-modulated trunk, injected as ControlNeXt's (`multicontrol.MultiConditionControlNeXtModel`).

Each module also says how many channels its control frames have (`condition_channels`: 3 per
condition picture).

A model directory says which one it holds by the control module's config (`_class_name`):
`controlnext/config.json` in the layout `save_pretrained` writes, `CONTROL_CONFIG_FILE` next to
the weights in the released layout (absent: ControlNeXt, as released), so `render` and
`finetune` follow the directory with no other setting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from torch import nn

from .control import ControlNeXtModel
from .controlnet import SVDControlNetModel
from .model_dir import CONTROL_CONFIG_FILE, CONTROLNEXT_COMPONENT, model_layout
from .multicontrol import DEFAULT_CONDITION_TYPES, MultiConditionControlNeXtModel

ControlType = Literal["controlnext", "controlnet", "controlnext-multi"]
CONTROL_TYPE_NAMES: tuple[str, ...] = get_args(ControlType)
CONTROL_TYPES: dict[str, type] = {
    "controlnext": ControlNeXtModel, "controlnet": SVDControlNetModel, "controlnext-multi": MultiConditionControlNeXtModel,
}


def control_class(config: Mapping | None) -> type:
    """The control module class a config names (`_class_name`); None: ControlNeXt (released layout)."""
    if config is None:
        return ControlNeXtModel
    name = config.get("_class_name", ControlNeXtModel.__name__)
    for cls in CONTROL_TYPES.values():
        if cls.__name__ == name:
            return cls
    known = ", ".join(cls.__name__ for cls in CONTROL_TYPES.values())
    raise ValueError(f"unknown control module class {name!r} in its config (known: {known})")


def new_control(control_type: ControlType, unet: nn.Module, **overrides) -> nn.Module:
    """A fresh control module of `control_type` for `unet`, on its device and dtype, ready to train:
    ControlNeXt with random weights, ControlNet as a copy of the UNet's input path with zero
    convolutions (its first output is the UNet's own). `overrides` set config entries."""
    if control_type not in CONTROL_TYPES:
        raise ValueError(f"control_type must be one of {CONTROL_TYPE_NAMES}, got {control_type!r}")
    if control_type == "controlnet":
        return SVDControlNetModel.from_unet(unet, **overrides)
    cls = CONTROL_TYPES[control_type]
    module = cls(out_channels=int(unet.config["block_out_channels"][0]), **overrides).to(unet.device)
    return module if module.dtype == unet.dtype else module.to(unet.dtype)


def control_from_config(config: Mapping | None, unet_config: Mapping) -> nn.Module:
    """An (uninitialised) control module to load weights into: from its config, or, without one,
    ControlNeXt shaped for the UNet (the released layout)."""
    if config is None:
        return ControlNeXtModel.for_unet(unet_config)
    return control_class(config).from_config(config)


def read_control_config(path: Path) -> dict | None:
    """The control module config of a released-layout directory (`CONTROL_CONFIG_FILE`), or None."""
    file = Path(path) / CONTROL_CONFIG_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except ValueError:
        raise ValueError(f"{file} is not valid JSON") from None


def model_control_config(model_dir: str | Path) -> dict | None:
    """The control module config of a model directory (either layout), None for a released
    directory without one (ControlNeXt). Reads one JSON file, no weights."""
    root = Path(model_dir).expanduser()
    if model_layout(root) == "diffusers":
        return json.loads((root / CONTROLNEXT_COMPONENT / "config.json").read_text())
    return read_control_config(root)


def model_condition_types(model_dir: str | Path) -> tuple[str, ...] | None:
    """The conditions a model directory's multi-condition control module takes, in the order of
    their pictures; None for a single-condition module (one picture per frame)."""
    config = model_control_config(model_dir)
    if config is None or control_class(config) is not MultiConditionControlNeXtModel:
        return None
    return tuple(config.get("condition_types", DEFAULT_CONDITION_TYPES))
