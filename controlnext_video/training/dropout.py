"""Conditioning dropout, as the official training step applies it (for classifier-free guidance).

One uniform `p` per sample decides both drops, with `q` the dropout probability (0.1 by default):
the CLIP image embedding is zeroed when `p < 2q`, the reference latents when `q <= p < 3q`.
So 10% of samples lose only the embedding, 10% both, 10% only the reference latents (for
q = 0.1). The pose control is never dropped: guidance at inference removes the image
conditioning, not the control.

`drop_conditions` is the multi-condition module's own dropout (not in the official step): it
blacks out random subsets of the stacked condition pictures, keeping at least one per sample, so
that the module learns to render from any subset.
"""

from __future__ import annotations

import torch

DEFAULT_DROPOUT_PROBABILITY = 0.1


def dropout_keeps(
    p: torch.Tensor, probability: float = DEFAULT_DROPOUT_PROBABILITY
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples keep their image embedding and their reference latents.

    Shapes: p `(B,)` uniforms in [0, 1) -> two bool tensors `(B,)`.
    """
    if not 0 <= probability <= 1 / 3:
        raise ValueError(f"dropout probability must be in [0, 1/3], got {probability}")
    keep_embedding = p >= 2 * probability
    keep_reference = (p < probability) | (p >= 3 * probability)
    return keep_embedding, keep_reference


def apply_conditioning_dropout(
    image_embeddings: torch.Tensor,
    reference_latents: torch.Tensor,
    p: torch.Tensor,
    probability: float = DEFAULT_DROPOUT_PROBABILITY,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the dropped image embeddings and reference latents.

    Shapes: image_embeddings `(B, 1, D)`, reference_latents `(B, C, h, w)`, p `(B,)` -> the
    first two, same shapes.
    """
    if p.shape != (image_embeddings.shape[0],) or reference_latents.shape[0] != p.shape[0]:
        raise ValueError(
            f"p {tuple(p.shape)} must hold one value per sample of image_embeddings "
            f"{tuple(image_embeddings.shape)} and reference_latents {tuple(reference_latents.shape)}"
        )
    keep_embedding, keep_reference = dropout_keeps(p.to(image_embeddings.device), probability)
    embeddings = torch.where(keep_embedding.view(-1, 1, 1), image_embeddings, torch.zeros_like(image_embeddings))
    latents = reference_latents * keep_reference.view(-1, 1, 1, 1).to(reference_latents.dtype)
    return embeddings, latents


def drop_conditions(
    control: torch.Tensor, probability: float, generator: torch.Generator, channels_per_condition: int = 3
) -> torch.Tensor:
    """Black out each condition of each sample with `probability`, keeping at least one present
    (one of those present is kept at random when all would go). An absent condition is an
    all-black picture (`multicontrol.MultiConditionControlNeXtModel`).

    Shapes: control `(B, F, C * K, H, W)` -> the same.
    """
    if not 0 <= probability < 1:
        raise ValueError(f"condition dropout probability must be in [0, 1), got {probability}")
    batch, frames, channels = control.shape[:3]
    groups = channels // channels_per_condition
    present = control.reshape(batch, frames, groups, -1).ne(0).any(dim=(1, 3)).cpu()
    keep = (torch.rand(batch, groups, generator=generator) >= probability) & present
    for b in range(batch):
        if present[b].any() and not keep[b].any():
            choices = present[b].nonzero().flatten()
            keep[b, choices[torch.randint(len(choices), (1,), generator=generator)]] = True
    mask = keep.to(control.device, control.dtype).repeat_interleave(channels_per_condition, dim=1)
    return control * mask.view(batch, 1, channels, 1, 1)
