"""Batched, per-sample augmentation on the GPU or CPU, applied *before* the shared transform.

torchvision's v2 random transforms draw one set of parameters per call, i.e. per batch; a
per-sample affine warp through ``affine_grid`` gives every image its own shift, rotation and
scale at the cost of one ``grid_sample`` per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Random affine warp (and optional horizontal flip) of float images in [0, 1]."""

    max_shift: float = 0.0  # fraction of the side, e.g. 0.1 = up to 2.8 px on 28x28
    max_rotate: float = 0.0  # degrees
    max_scale: float = 0.0  # relative, e.g. 0.1 = 0.9x .. 1.1x
    hflip: bool = False  # only where a mirror image is still the same class (clothes, not digits)
    # Random erasing (Zhong et al., 2017): with this probability a random rectangle of 2-25%
    # of the image is set to the background, so no single region decides the class.
    erase: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.max_shift or self.max_rotate or self.max_scale or self.hflip or self.erase)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def uniform(scale: float) -> torch.Tensor:
            r = torch.rand(n, generator=generator, device=generator.device)
            return ((r * 2 - 1) * scale).to(x.device)

        angle = uniform(math.radians(self.max_rotate))
        scale = 1 + uniform(self.max_scale)
        # affine_grid maps output to input coordinates in [-1, 1], so a shift of s
        # (fraction of the side) is 2s in grid units.
        tx, ty = uniform(2 * self.max_shift), uniform(2 * self.max_shift)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=generator.device) < 0.5
            theta[:, 0, 0] = torch.where(flip.to(x.device), -theta[:, 0, 0], theta[:, 0, 0])
            theta[:, 0, 1] = torch.where(flip.to(x.device), -theta[:, 0, 1], theta[:, 0, 1])
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self._erase(x, generator) if self.erase else x

    def _erase(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape

        def rand() -> torch.Tensor:
            return torch.rand(n, generator=generator, device=generator.device).to(x.device)

        area = (0.02 + 0.23 * rand()) * h * w
        aspect = torch.exp((rand() * 2 - 1) * math.log(3.0))  # 1/3 .. 3, log-uniform
        eh = (area * aspect).sqrt().clamp(1, h)
        ew = (area / aspect).sqrt().clamp(1, w)
        top, left = rand() * (h - eh), rand() * (w - ew)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        box = (
            (rows >= top.view(n, 1, 1))
            & (rows < (top + eh).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1))
            & (cols < (left + ew).view(n, 1, 1))
            & (rand() < self.erase).view(n, 1, 1)
        )
        return x.masked_fill(box.unsqueeze(1), 0.0)


AUGMENTS: dict[str, Augment] = {
    "none": Augment(),
    # Digits: small shifts, rotations and size changes; never flipped (a mirrored 2 is no 2).
    "digits": Augment(max_shift=0.08, max_rotate=10.0, max_scale=0.1),
    # Clothes: mirror images are the same article; keep warps small, the items are centred.
    "fashion": Augment(max_shift=0.06, max_rotate=0.0, max_scale=0.0, hflip=True),
    # Mirror images only: the items are centred, and the shipped CNN scores higher without shifts.
    "fashion-flip": Augment(hflip=True),
    # Shifts and flips, plus random erasing of half the images: a stronger regularizer.
    "fashion-erase": Augment(max_shift=0.06, hflip=True, erase=0.5),
}
