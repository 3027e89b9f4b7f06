"""Training checkpoints in the artifact store: written atomically, read strictly, the last K kept.

A checkpoint is a folder `<prefix>/step-<step>/` holding
- `trainable.safetensors`: the trainable parameters (names `controlnext.*`, `unet.*`), float32;
- `optimizer.pt`: the optimizer's and the learning-rate scheduler's state dicts (tensors and
  plain numbers only: read back with `torch.load(weights_only=True)`);
- `state.json`, written last: the step, the run's settings and anything the caller adds (loss
  history, data hashes), and the SHA-256 of the two other files.

Every file is written atomically by the store, and a folder counts only once its `state.json`
exists, so a process killed while writing leaves the previous checkpoint as the latest. The
random state needs no file: every random draw of a step derives from (seed, step).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..weights import WeightsError, check_tensors

TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
STEP_FOLDER = re.compile(r"step-(\d+)")
# Zero-padded width of the step in folder names (sorted listings are in step order).
STEP_DIGITS = 9


class CheckpointError(ValueError):
    """A checkpoint that does not match the run resuming from it."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back from the store.

    Attributes:
        key: its folder in the store.
        step: optimizer steps done.
        trainable: the trainable parameters by name (CPU, as saved).
        optimizer: the optimizer's state dict.
        lr_scheduler: the learning-rate scheduler's state dict.
        state: the contents of `state.json`.
    """

    key: str
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    state: dict[str, Any]


def checkpoint_key(prefix: str, step: int) -> str:
    return f"{prefix.rstrip('/')}/step-{step:0{STEP_DIGITS}d}"


def _complete_steps(store, prefix: str) -> list[int]:
    steps = []
    for name in store.children(prefix):
        match = STEP_FOLDER.fullmatch(name)
        if match and store.exists(f"{prefix.rstrip('/')}/{name}/{STATE_FILE}"):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_checkpoint(store, prefix: str) -> str | None:
    """The key of the newest complete checkpoint under `prefix`, or None."""
    steps = _complete_steps(store, prefix)
    return checkpoint_key(prefix, steps[-1]) if steps else None


def save_checkpoint(
    store,
    prefix: str,
    *,
    step: int,
    trainable: Mapping[str, torch.Tensor],
    optimizer: Mapping[str, Any],
    lr_scheduler: Mapping[str, Any],
    state: Mapping[str, Any],
    keep: int,
) -> str:
    """Write a checkpoint for `step` under `prefix`, then delete all but the newest `keep`.

    Returns the checkpoint's key. `state` must be JSON-serialisable.
    """
    from safetensors.torch import save

    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    key = checkpoint_key(prefix, step)
    weights = save({name: t.detach().to("cpu", torch.float32).contiguous() for name, t in trainable.items()})
    buffer = io.BytesIO()
    torch.save({"optimizer": dict(optimizer), "lr_scheduler": dict(lr_scheduler)}, buffer)
    hashes = {}
    for name, data in ((TRAINABLE_FILE, weights), (OPTIMIZER_FILE, buffer.getvalue())):
        hashes[name] = store.write_bytes(f"{key}/{name}", data).sha256
    store.write_json(f"{key}/{STATE_FILE}", {**dict(state), "step": step, "sha256": hashes})
    for old in _complete_steps(store, prefix)[:-keep]:
        store.delete_prefix(checkpoint_key(prefix, old))
    return key


def load_checkpoint(store, key: str) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, verifying its files' hashes."""
    from safetensors.torch import load

    state = store.read_json(f"{key}/{STATE_FILE}")
    blobs = {}
    for name in (TRAINABLE_FILE, OPTIMIZER_FILE):
        data = store.read_bytes(f"{key}/{name}")
        if hashlib.sha256(data).hexdigest() != state["sha256"][name]:
            raise CheckpointError(f"{key}/{name} does not match the hash recorded in its {STATE_FILE}")
        blobs[name] = data
    states = torch.load(io.BytesIO(blobs[OPTIMIZER_FILE]), map_location="cpu", weights_only=True)
    return Checkpoint(
        key=key,
        step=int(state["step"]),
        trainable=load(blobs[TRAINABLE_FILE]),
        optimizer=states["optimizer"],
        lr_scheduler=states["lr_scheduler"],
        state=state,
    )


def restore_trainable(
    parameters: Mapping[str, torch.nn.Parameter], saved: Mapping[str, torch.Tensor], key: str
) -> None:
    """Copy saved values into the trainable parameters; the names and shapes must match exactly."""
    try:
        check_tensors(parameters, saved, what="checkpoint", path=key)
    except WeightsError as exc:
        raise CheckpointError(f"{exc} (was it written with another unet_training setting?)") from exc
    with torch.no_grad():
        for name, param in parameters.items():
            param.copy_(saved[name])
