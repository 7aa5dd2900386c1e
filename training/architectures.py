"""Model architectures, made by name from one registry.

Each architecture is an ``nn.Module`` built from keyword arguments that are stored in the
model manifest, so a loader can rebuild the exact model. Every forward returns logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class LeNet(nn.Module):
    """The tutorial LeNet: two conv/ReLU/max-pool stages, then fc -> 120 -> 84 -> classes."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        kernel_size: int = 5,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        # 32 -> (32-k+1)//2 -> ((32-k+1)//2-k+1)//2: 5 for k=5 (400 features), 6 for k=3 (576).
        side = ((input_size - kernel_size + 1) // 2 - kernel_size + 1) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


class MLP(nn.Module):
    """The Fashion-MNIST tutorial network: flatten, 784 -> 512 -> 512 -> classes with ReLU."""

    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 784,
        hidden: tuple[int, ...] = (512, 512),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    # bias=False: batch norm's shift makes a conv bias redundant.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class FashionCNN(nn.Module):
    """A small VGG-style CNN for 28x28 inputs: [conv-bn-relu x2, max-pool] per entry of
    ``channels``, then an MLP head.

    Two 3x3 convolutions per stage see a 5x5 field at the cost of ~2 5x5 kernels' weights;
    batch norm lets it train fast with a high learning rate; dropout keeps the head honest.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        channels: tuple[int, ...] = (16, 32),
        hidden: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        cin, side = in_channels, 28
        for cout in channels:
            stages += [_conv_block(cin, cout), _conv_block(cout, cout), nn.MaxPool2d(2)]
            cin, side = cout, side // 2  # 28 -> 14 -> 7 -> 3
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(cin * side * side, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Architecture:
    """A registry entry: how to build the module, its default config and its input size."""

    factory: Callable[..., nn.Module]
    config: dict[str, Any]
    input_size: tuple[int, int]  # (height, width) the network expects


ARCHITECTURES: dict[str, Architecture] = {
    "lenet5": Architecture(LeNet, {"kernel_size": 5, "input_size": 32}, (32, 32)),
    "lenet3x3": Architecture(LeNet, {"kernel_size": 3, "input_size": 32}, (32, 32)),
    "mlp": Architecture(MLP, {"in_features": 784, "hidden": [512, 512]}, (28, 28)),
    "fashion_cnn": Architecture(FashionCNN, {"channels": [16, 32], "hidden": 256}, (28, 28)),
}


class UnknownArchitectureError(KeyError):
    """Raised for a name that is not in the registry."""


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitectureError(f"unknown architecture {name!r} (known: {known})") from None


def build_model(
    name: str, config: dict[str, Any] | None = None, num_classes: int = 10
) -> nn.Module:
    """Build the architecture ``name`` with its default config updated by ``config``."""
    arch = get_architecture(name)
    kwargs = {**arch.config, **(config or {})}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return arch.factory(num_classes=num_classes, **kwargs)
