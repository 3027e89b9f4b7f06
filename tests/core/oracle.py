"""A literal, slow re-statement of the reference algorithm (shared/reference, sections 3-5).

It differs from the pipeline on purpose: every window takes its own Euler step written out by
hand from the scheduler's public sigmas, stepped latents (not model outputs) are averaged, the
control module runs on both guidance halves with a per-row scale of 0 (unconditional) and
`control_scale` (conditional), and the cross normalization is applied to the whole batch. It
reproduces the golden fixture, so agreement with it on other settings shows the pipeline follows
the reference beyond the one fixture case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler

STRENGTH = 0.2


def reference_windows(n: int, window: int, overlap: int) -> list[int]:
    size = min(window, n)
    stride = size - overlap
    if size == n:
        return [0]
    return [s if s + size <= n else n - size for s in range(0, n - overlap, stride)]


@torch.no_grad()
def reference_latents(pipe, ref_u8, poses_u8, *, latents, generator, steps, min_g, max_g, window, overlap,
                      control_scale=1.0, fps_id=6, motion=128, noise_aug=0.02):
    """Final latents of the reference algorithm. ref_u8 (H, W, 3), poses_u8 (N, H, W, 3) uint8 numpy."""
    ref = torch.from_numpy(ref_u8).permute(2, 0, 1)[None].float() / 255
    poses = torch.from_numpy(poses_u8).permute(0, 3, 1, 2).float() / 255
    n = poses.shape[0]
    emb = pipe.encode_image(ref)
    img_lat = pipe.encode_reference_latents(ref, noise_aug, generator)
    sched = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    sigmas = sched.sigmas
    x = latents.clone().float() * sched.init_noise_sigma
    size = min(window, n)
    g = torch.linspace(min_g, max_g, size).view(1, size, 1, 1, 1)
    time_ids = torch.tensor([[fps_id, motion, noise_aug]] * 2, dtype=torch.float32)
    scale_rows = torch.tensor([0.0] * size + [control_scale] * size).view(-1, 1, 1, 1)
    starts = reference_windows(n, window, overlap)

    for i, t in enumerate(sched.timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        total = torch.zeros_like(x)
        count = torch.zeros(1, n, 1, 1, 1)
        for s in starts:
            xw = x[:, s : s + size]
            idx = [0] + list(range(s + 1, s + size))
            control = torch.cat([poses[idx][None]] * 2)
            features = pipe.controlnext(control, t)

            def hook(module, args, output):
                hidden, res = output
                dims = (1, 2, 3)
                c = (features - features.mean(dims, keepdim=True)) * (
                    hidden.std(dims, keepdim=True) / (features.std(dims, keepdim=True) + 1e-5)
                ) + hidden.mean(dims, keepdim=True)
                c = F.adaptive_avg_pool2d(c, hidden.shape[-2:])
                return hidden + c * scale_rows * STRENGTH, res

            handle = pipe.unet.down_blocks[0].register_forward_hook(hook)
            try:
                inp = torch.cat([xw / (sigma**2 + 1) ** 0.5] * 2)
                cond = torch.cat([torch.zeros_like(img_lat), img_lat]).unsqueeze(1).repeat(1, size, 1, 1, 1)
                out = pipe.unet(
                    torch.cat([inp, cond], dim=2), t,
                    encoder_hidden_states=torch.cat([torch.zeros_like(emb), emb]),
                    added_time_ids=time_ids, return_dict=False,
                )[0]
            finally:
                handle.remove()
            u, c_ = out.chunk(2)
            v = u + g * (c_ - u)
            denoised = v * (-sigma / (sigma**2 + 1) ** 0.5) + xw / (sigma**2 + 1)
            stepped = xw + (xw - denoised) / sigma * (sigma_next - sigma)
            keep = 0 if s == 0 else 1
            total[:, s + keep : s + size] += stepped[:, keep:]
            count[:, s + keep : s + size] += 1
        x = total / count
    return x
