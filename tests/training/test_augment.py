"""Training augmentation: what each transform does to a batch."""

import torch
import torch.nn.functional as F

from training.augment import Augment


def test_whole_pixel_shifts_move_pixels_without_blurring_them() -> None:
    x = torch.rand(64, 1, 28, 28)
    out = Augment(shift_px=2, hflip=True)(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    seen = set()
    for i in range(len(x)):
        # Each output is its input, maybe mirrored, cut from the zero-padded image at one of
        # the 5x5 offsets: the same pixel values, none interpolated.
        matches = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(5)
            for dx in range(5)
            if torch.allclose(
                out[i, 0],
                (padded[i, 0].flip(-1) if flip else padded[i, 0])[dy : dy + 28, dx : dx + 28],
                atol=1e-5,
            )
        ]
        assert len(matches) == 1, f"image {i}: {matches}"
        seen.add(matches[0])
    assert {flip for flip, _, _ in seen} == {False, True}
    assert len({dx for *_, dx in seen}) == 5
