"""One model's inference path, in the order an image goes through it.

1. ``decode`` (app/imaging.py): upload bytes -> ``(H, W)`` uint8 grayscale pixels, with
   the format, size and pixel-count checks.
2. ``fit``: the upload normalization (``auto``/``dataset``/``none``) that makes an upload
   look like the model's dataset (training/normalize.py).
3. ``transform``: the model's own resize and normalization, once per batch over every
   request in it (training/preprocess.py, the path training uses).
4. ``forward``: eager, ONNX Runtime or CUDA graphs (app/optimize.py) -> probabilities.
5. ``encode``: probabilities -> a protocol's response; each route brings its own encoder.

Stages 1-2 run per request (:meth:`Pipeline.prepare`), 3-4 per batch, 5 per request again,
all on the model's batch worker (app/batching.py), never on the event loop.

Between stages an image is a numpy array: ``(H, W)`` uint8 pixels still to be transformed,
or a ``(C, height, width)`` float32 model input that already was (an input sent as a tensor,
or a large upload transformed as soon as it was decoded, so that a request never holds more
than :data:`HELD_PIXELS` untransformed pixels).
"""

from __future__ import annotations

import io
import time
from base64 import b64encode
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from app.imaging import decode
from app.optimize import Forward
from training.loader import LoadedModel
from training.normalize import Mode

Upload = tuple[str, bytes]  # (name for messages, bytes)
Observe = Callable[[str, int, float], None]  # (model, images, seconds) of one forward pass

# A request's untransformed pixels are transformed once they reach this many (28x28: 1,337
# images); the float copy of a batch costs 4 bytes a pixel, so large uploads are never held.
HELD_PIXELS = 1 << 20


def is_model_input(array: np.ndarray) -> bool:
    """An already transformed ``(C, height, width)`` float32 input, not uint8 pixels."""
    return array.dtype == np.float32


class Pipeline:
    """The stages of one loaded model; ``forward`` is what runs it (the model or an
    optimized form of it). Called from one batch worker thread at a time."""

    def __init__(
        self,
        loaded: LoadedModel,
        forward: Forward,
        max_pixels: int,
        observe: Observe | None = None,
    ) -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.classes = loaded.manifest.classes
        self.preprocessor = loaded.preprocessor
        self.max_pixels = max_pixels
        self.model = forward  # the model or an optimized form of it (app/optimize.py)
        self._observe = observe
        self._device = loaded.device

    # stages 1-2 --------------------------------------------------------------------------

    def prepare(self, uploads: Sequence[Upload], mode: Mode = "auto") -> list[np.ndarray]:
        """Decode and fit one request's uploads, in order: the first bad one is the error."""
        decoded = (decode(data, name, self.max_pixels) for name, data in uploads)
        arrays: list[np.ndarray] = []
        held = 0
        for array in self.preprocessor.fit(decoded, mode):
            arrays.append(array)
            held += array.size
            if held >= HELD_PIXELS:
                arrays = list(self.transform(arrays).numpy())
                held = 0
        return arrays

    # stage 3 -----------------------------------------------------------------------------

    def transform(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Arrays of every request in a batch -> the ``(n, C, height, width)`` model inputs,
        in order: the uint8 ones through the model's transform (grouped by size), the
        float32 ones as they are."""
        if not any(is_model_input(a) for a in arrays):
            return self.preprocessor.from_arrays(arrays)
        spec = self.preprocessor.spec
        out = torch.empty((len(arrays), spec.channels, spec.height, spec.width))
        pixels = [i for i, a in enumerate(arrays) if not is_model_input(a)]
        ready = [i for i, a in enumerate(arrays) if is_model_input(a)]
        if pixels:
            out[pixels] = self.preprocessor.from_arrays([arrays[i] for i in pixels])
        out[ready] = torch.from_numpy(np.stack([arrays[i] for i in ready]))
        return out

    # stage 4 -----------------------------------------------------------------------------

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """One forward pass on the model's device -> softmax probabilities on the CPU."""
        started = time.perf_counter()
        with torch.inference_mode():
            x = inputs
            if self._device.type == "cuda":
                x = x.pin_memory().to(self._device, non_blocking=True)
            # .cpu() waits for the stream, so the probabilities are complete here.
            probs = torch.softmax(self.model(x).float(), dim=1).cpu()
        if self._observe is not None:
            self._observe(self.name, int(inputs.shape[0]), time.perf_counter() - started)
        return probs

    # for encoders ------------------------------------------------------------------------

    def input_images(self, inputs: torch.Tensor) -> list[str]:
        """Model inputs -> what the model saw, each a ``data:image/png`` URL of the input
        with the normalization undone (grayscale, at the model's input size)."""
        spec = self.preprocessor.spec
        mean = torch.tensor(spec.mean).view(-1, 1, 1)
        std = torch.tensor(spec.std).view(-1, 1, 1)
        pixels = ((inputs * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        return [_png_data_url(p[0].numpy()) for p in pixels]


def _png_data_url(gray: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    return "data:image/png;base64," + b64encode(buf.getvalue()).decode("ascii")
