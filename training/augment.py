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
    # Whole-pixel shifts of up to this many pixels (the "pad and random crop" of CIFAR
    # recipes): unlike fractional shifts they move pixels without blurring them, so training
    # images stay as sharp as the test images.
    shift_px: int = 0
    max_rotate: float = 0.0  # degrees
    max_scale: float = 0.0  # relative, e.g. 0.1 = 0.9x .. 1.1x
    hflip: bool = False  # only where a mirror image is still the same class (clothes, not digits)

    @property
    def active(self) -> bool:
        return any((self.max_shift, self.shift_px, self.max_rotate, self.max_scale, self.hflip))

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
        if self.shift_px:
            # k pixels are 2k/side grid units; with no rotation or scaling, bilinear sampling
            # at whole-pixel offsets copies pixels exactly.
            h, w = x.shape[-2:]
            px = torch.randint(
                -self.shift_px, self.shift_px + 1, (2, n), generator=generator,
                device=generator.device,
            ).to(x.device, x.dtype)  # fmt: skip
            tx, ty = tx + px[0] * 2 / w, ty + px[1] * 2 / h
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=generator.device) < 0.5
            theta[:, 0, 0] = torch.where(flip.to(x.device), -theta[:, 0, 0], theta[:, 0, 0])
            theta[:, 0, 1] = torch.where(flip.to(x.device), -theta[:, 0, 1], theta[:, 0, 1])
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


AUGMENTS: dict[str, Augment] = {
    "none": Augment(),
    # Digits: small shifts, rotations and size changes; never flipped (a mirrored 2 is no 2).
    "digits": Augment(max_shift=0.08, max_rotate=10.0, max_scale=0.1),
    # Clothes: mirror images are the same article; keep warps small, the items are centred.
    "fashion": Augment(max_shift=0.06, max_rotate=0.0, max_scale=0.0, hflip=True),
    # Whole-pixel shifts of up to 2 px and mirror images (the fashion-cnn recipe).
    "fashion-crop": Augment(shift_px=2, hflip=True),
}
