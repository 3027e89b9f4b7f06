"""Device and precision names, as requests and the CLI give them, resolved for this machine."""

from __future__ import annotations

import torch

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(device: str) -> str:
    """`auto`: the first CUDA device when there is one, else the CPU; other names as they are."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that has it (else float16), float32 on the CPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)
