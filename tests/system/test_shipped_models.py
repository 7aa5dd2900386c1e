"""Every shipped model, re-evaluated on its full 10,000-image test split."""

import pytest

from tests.helpers import MODELS_DIR
from training.datasets import load_split
from training.engine import evaluate
from training.loader import discover, load_model, read_manifest
from training.recipes import MAX_ECE, RECIPES, TARGETS

SHIPPED = sorted(p.name for p in discover(MODELS_DIR))


def test_every_recipe_is_shipped_and_every_shipped_model_has_a_recipe() -> None:
    assert SHIPPED == sorted(RECIPES) == sorted(TARGETS)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_was_trained_by_its_recipe_as_written(name: str) -> None:
    # `python -m training shipped NAME` retrains what ships, not an edited-since variant.
    trained = read_manifest(MODELS_DIR / name).training
    assert {k: trained.get(k) for k in RECIPES[name]} == RECIPES[name]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_meets_its_target_and_its_manifest(name: str) -> None:
    loaded = load_model(MODELS_DIR / name, "cpu")
    manifest = loaded.manifest
    assert manifest.name == name
    assert manifest.dataset == RECIPES[name]["dataset"]
    assert manifest.architecture.name == RECIPES[name]["arch"]
    test = load_split(manifest.dataset, train=False)
    assert len(test) == manifest.metrics.test_samples == 10_000
    result = evaluate(loaded.model, test, loaded.preprocessor)
    assert result.accuracy >= TARGETS[name], f"{name}: {result.accuracy:.4f} < {TARGETS[name]}"
    assert abs(result.accuracy - manifest.metrics.test_accuracy) <= 0.001
    # The probabilities mean what they say: the loaded model applies the manifest's
    # temperature, fitted on training images, never on these.
    assert manifest.calibration.method == "temperature"
    ece = result.calibration.ece
    assert ece <= MAX_ECE, f"{name}: ECE {ece:.4f} > {MAX_ECE}"
    assert manifest.metrics.test_ece is not None
    assert abs(ece - manifest.metrics.test_ece) <= 0.001
