"""Safe, strict loading of checkpoint files into modules.

safetensors files are read directly; `.bin`/`.pt`/`.pth` pickles only with
`torch.load(weights_only=True)`. Loading is strict: missing keys, unexpected keys and shape
mismatches raise a `WeightsError` that names them and the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# File stems of the two ControlNeXt files inside a model directory.
UNET_WEIGHTS_STEM = "controlnext-unet"
CONTROLNEXT_WEIGHTS_STEM = "controlnext"
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# How many offending key names an error message lists before summarising.
MAX_KEYS_IN_MESSAGE = 8


class WeightsError(ValueError):
    """A checkpoint file that cannot be loaded into the module it is meant for."""


def find_weights(directory: Path, stem: str) -> Path | None:
    """The file `stem.safetensors` or `stem.bin` (in that order of preference) in `directory`."""
    for suffix in (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES):
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or pickle file onto the CPU, without executing code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif suffix in PICKLE_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:
            raise WeightsError(
                f"{what} file {path} has an unknown extension {suffix!r}: expected .safetensors or .bin"
            )
    except WeightsError:
        raise
    except Exception as exc:  # a corrupt or foreign file: say which one
        raise WeightsError(f"cannot read {what} file {path}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{what} file {path} does not hold a flat mapping of parameter names to tensors")
    return dict(state)


def _list(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_KEYS_IN_MESSAGE])
    more = len(names) - MAX_KEYS_IN_MESSAGE
    return shown + (f" (and {more} more)" if more > 0 else "")


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str, path: Path | str) -> None:
    """Raise `WeightsError` unless `state` has exactly the module's keys and shapes."""
    check_tensors(module.state_dict(), state, what=what, path=path)


def check_tensors(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], *, what: str, path: Path | str
) -> None:
    """Raise `WeightsError` unless `state` has exactly the keys and shapes of `expected`."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_list(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_list(mismatched)}")
    if problems:
        raise WeightsError(f"{what} file {path} does not match the model: " + "; ".join(problems))


def load_into(
    module: nn.Module,
    path: str | Path,
    *,
    what: str,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Strictly load `path` into `module` (which may live on the meta device), cast to `dtype`.

    Tensors are assigned rather than copied, so a module built on the meta device never
    allocates its random initial weights.
    """
    state = read_state_dict(path, what)
    check_state_dict(module, state, what=what, path=path)
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    left_on_meta = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise WeightsError(f"{what}: tensors not set by {path}: {_list(left_on_meta)}")
    return module.eval().requires_grad_(False)
