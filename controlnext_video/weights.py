"""Safe, strict loading of checkpoint files into modules.

safetensors files are read directly; `.bin`/`.pt`/`.pth` pickles only with
`torch.load(weights_only=True)`; a sharded checkpoint through its index
(`<stem>.safetensors.index.json`, as `save_pretrained` writes one). Loading is strict: missing
keys, unexpected keys and shape mismatches raise a `WeightsError` that names them and the file.
"""

from __future__ import annotations

import json
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


def is_shard_index(path: Path) -> bool:
    """Whether `path` names the index of a sharded checkpoint (`<stem>.safetensors.index.json`,
    `<stem>.safetensors.index.fp16.json`, ...), as diffusers and transformers write them."""
    return path.name.endswith(".json") and ".index" in path.name


def weight_files(path: Path) -> tuple[Path, ...]:
    """The files of a checkpoint: the file itself, or a shard index followed by its shards."""
    if not is_shard_index(path):
        return (path,)
    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise WeightsError(f"shard index {path} is not readable (damaged or incomplete download?)") from None
    if any(not isinstance(name, str) or Path(name).name != name for name in shards):
        raise WeightsError(f"shard index {path} names files outside its folder")
    return (path, *(path.parent / name for name in shards))


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or pickle file (or the shards a shard index lists)
    onto the CPU, without executing code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if is_shard_index(path):
        state: dict[str, torch.Tensor] = {}
        for shard in weight_files(path)[1:]:
            state.update(read_state_dict(shard, what))
        return state
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
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    _raise_on_problems(set(expected) - set(state), set(state) - set(expected), mismatched, f"{what} file {path}")


def check_loading_info(info: Mapping[str, list], *, what: str, path: Path | str) -> None:
    """Raise `WeightsError` when a diffusers `from_pretrained(..., output_loading_info=True)` reports
    missing, unexpected or mis-shaped keys (diffusers itself only logs a warning)."""
    mismatched = [str(entry) for entry in info.get("mismatched_keys", [])]
    _raise_on_problems(info.get("missing_keys", []), info.get("unexpected_keys", []), mismatched, f"{what} in {path}")


def _raise_on_problems(missing, unexpected, mismatched, source: str) -> None:
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            problems.append(f"{len(keys)} {label}: {_list(sorted(keys))}")
    if problems:
        raise WeightsError(f"{source} does not match the model: " + "; ".join(problems))


def load_into(
    module: nn.Module,
    path: str | Path,
    *,
    what: str,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Strictly load `path` into `module` (which may live on the meta device), cast to `dtype`.

    Tensors are assigned rather than copied into the module, so a module built on the meta
    device never allocates its random initial weights; each is first copied once into memory of
    its own (see `own_memory`).
    """
    state = read_state_dict(path, what)
    check_state_dict(module, state, what=what, path=path)
    for key, value in state.items():  # in place: each file tensor is freed once copied
        state[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype, copy=True)
    module.load_state_dict(state, strict=True, assign=True)
    left_on_meta = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise WeightsError(f"{what}: tensors not set by {path}: {_list(left_on_meta)}")
    return module.eval().requires_grad_(False)


def own_memory(module: nn.Module) -> nn.Module:
    """Copy every parameter and buffer into freshly allocated memory, one tensor at a time.

    Loaders hand out tensors that map their file (the file must then stay unchanged while the
    model lives) or that sit at unaligned addresses, where CPU matrix kernels can round the last
    bit differently: a model loaded from a file would not compute bit for bit as the model saved.
    """
    for param in module.parameters():  # each once: tied parameters are one object
        param.data = param.data.clone()
    copies: dict[int, torch.Tensor] = {}
    for submodule in module.modules():
        for name, buffer in submodule.named_buffers(recurse=False):
            if id(buffer) not in copies:
                copies[id(buffer)] = buffer.clone()
            setattr(submodule, name, copies[id(buffer)])
    return module
