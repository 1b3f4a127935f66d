"""The package layout: product folders import as groundvlm.* and the isolation helper really isolates."""

import importlib

import pytest

from tests._isolated import run_isolated


@pytest.mark.parametrize(
    "name", ["groundvlm.modeling", "groundvlm.processing", "groundvlm.recipes", "groundvlm.recipes.common",
             "groundvlm.recipes.toyworld", "groundvlm.recipes.systems", "groundvlm.recipes.systems.pin",
             "groundvlm.recipes.metrics", "groundvlm.recipes.convert", "groundvlm.recipes.push"]
)
def test_subpackages_import(name):
    assert importlib.import_module(name).__name__ == name


def test_no_generic_top_level_names_installed():
    for generic in ("modeling", "processing", "recipes"):
        spec = importlib.util.find_spec(generic)
        assert spec is None or "site-packages" not in (spec.origin or ""), generic


def test_isolated_process_cannot_import_groundvlm(tmp_path):
    out = run_isolated("import transformers, torch\nprint('ok', transformers.__version__)", tmp_path)
    assert out.startswith("ok")
