import pytest
import torch

from training.architectures import ARCHITECTURES, UnknownArchitectureError, build_model

# Parameter counts from the layer sizes the tutorials give (weights + biases).
EXPECTED_PARAMS = {
    # conv 1->6 5x5, conv 6->16 5x5, fc 400->120->84->10
    "lenet5": (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + 850,
    # conv 1->6 3x3, conv 6->16 3x3, fc 576->120->84->10
    "lenet3x3": (6 * 9 + 6) + (16 * 6 * 9 + 16) + (576 * 120 + 120) + (120 * 84 + 84) + 850,
    # 784->512->512->10
    "mlp": (784 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_forward_returns_logits_per_sample(name: str) -> None:
    arch = ARCHITECTURES[name]
    model = build_model(name).eval()
    x = torch.randn(5, 1, *arch.input_size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (5, 10)
    # Logits, not probabilities: rows need not sum to one.
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count_matches_the_tutorial(name: str) -> None:
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


def test_fashion_cnn_is_small_and_uses_batch_norm() -> None:
    model = build_model("fashion_cnn")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < EXPECTED_PARAMS["mlp"]


@pytest.mark.parametrize("channels", [[16, 32], [16, 32, 96]])
def test_fashion_cnn_has_one_conv_stage_per_entry_of_channels(channels: list[int]) -> None:
    model = build_model("fashion_cnn", {"channels": channels}).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [c for c in channels for _ in (0, 1)]
    # Each stage halves the side: 28 -> 14 -> 7 (-> 3), flattened into the head.
    side = {2: 7, 3: 3}[len(channels)]
    head = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert head.in_features == channels[-1] * side * side
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_config_overrides_defaults() -> None:
    model = build_model("mlp", {"hidden": [64]}, num_classes=3)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    assert sum(p.numel() for p in model.parameters()) == 784 * 64 + 64 + 64 * 3 + 3


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(UnknownArchitectureError, match="lenet5"):
        build_model("resnet9000")
