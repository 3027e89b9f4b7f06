"""The result of a fine-tuning run: a model directory that `from_pretrained` and `render` load.

It holds the base model's SVD components as they are (configs, VAE, image encoder, feature
extractor, scheduler; of the base UNet only its config), the trained UNet and control module
as the two ControlNeXt files, the control module's config (which says its design, so a
ControlNet branch renders as one), and `training.json`, the training card.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..model_dir import CONTROL_CONFIG_FILE
from ..weights import CONTROLNEXT_WEIGHTS_STEM, PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, UNET_WEIGHTS_STEM

CARD_FILE = "training.json"
# The only file of the base UNet folder a model directory needs.
UNET_CONFIG = "unet/config.json"


def base_files(base_model_dir: Path) -> list[str]:
    """The base model's files a fine-tuned model directory copies (relative paths): everything
    but hidden files, the base UNet's weights and the ControlNeXt weight files being replaced."""
    replaced = {
        f"{stem}{suffix}"
        for stem in (UNET_WEIGHTS_STEM, CONTROLNEXT_WEIGHTS_STEM)
        for suffix in (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES)
    }
    replaced.add(CONTROL_CONFIG_FILE)
    files = []
    for path in sorted(base_model_dir.rglob("*")):
        relative = path.relative_to(base_model_dir).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in relative.split("/")):
            continue
        if relative in replaced or (relative.startswith("unet/") and relative != UNET_CONFIG):
            continue
        files.append(relative)
    return files


def export_model(
    pipe,
    base_model_dir: str | Path,
    store,
    prefix: str,
    *,
    card: Mapping[str, Any],
    dtype: torch.dtype = torch.float32,
) -> str:
    """Write the fine-tuned model directory under `prefix` in `store` and return `prefix`.

    `dtype` is the dtype of the two weight files: float32 keeps the trained values exactly
    (a learning rate of 1e-5 moves weights by less than float16's resolution).
    The card is written last, so a directory with `training.json` is complete.
    """
    from safetensors.torch import save_file

    base_model_dir = Path(base_model_dir)
    if not (base_model_dir / UNET_CONFIG).is_file():
        raise FileNotFoundError(f"{base_model_dir} is not an SVD model directory: {UNET_CONFIG} is missing")
    prefix = prefix.rstrip("/")
    for relative in base_files(base_model_dir):
        store.put_file(base_model_dir / relative, f"{prefix}/{relative}")
    with tempfile.TemporaryDirectory() as scratch:
        for stem, module in ((UNET_WEIGHTS_STEM, pipe.unet), (CONTROLNEXT_WEIGHTS_STEM, pipe.controlnext)):
            local = Path(scratch) / f"{stem}.safetensors"
            state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(local))
            store.put_file(local, f"{prefix}/{local.name}")
            local.unlink()
    store.write_bytes(f"{prefix}/{CONTROL_CONFIG_FILE}", pipe.controlnext.to_json_string().encode())
    store.write_json(f"{prefix}/{CARD_FILE}", dict(card))
    return prefix


def training_card(config, result, *, base_model: str, data: Mapping[str, str]) -> dict[str, Any]:
    """The training card: what was trained, on what, how, and how it went.

    Args:
        config: the run's `TrainingConfig`.
        result: its `TrainingResult`.
        base_model: the base model directory or its name.
        data: the training clips by name, with their content hashes (SHA-256).
    """
    return {
        "base_model": base_model,
        "data": dict(data),
        "settings": config.to_dict(),
        "steps": result.steps,
        "processes": result.processes,
        "trainable_parameters": result.trainable_parameters,
        "final_loss": result.final_loss,
        "losses": list(result.losses),
    }
