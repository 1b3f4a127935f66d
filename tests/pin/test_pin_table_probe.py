"""benchmarks/pin_table.py (merging concurrent recipe runs, selection on validation) and the pure pieces of
benchmarks/pin_probe.py (held-out ridge R², the slot prefix writer). No training, no timing."""

import json
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from tests._benchmarks import load_benchmark


@pytest.fixture(scope="module")
def table():
    return load_benchmark("pin_table")


@pytest.fixture(scope="module")
def probe():
    return load_benchmark("pin_probe")


def test_variant_parsing(table):
    # What argv holds after the shell took the quotes off `lr3e-4:"--method pin --learning_rate 3e-4"`:
    assert table.parse_variant("lr3e-4:--method pin --learning_rate 3e-4") == (
        "lr3e-4",
        ["--method", "pin", "--learning_rate", "3e-4"],
    )
    assert table.parse_variant("main:") == ("main", [])
    for bad in ("no-colon", ":--method pin", "bad name:--method pin"):
        with pytest.raises(ValueError, match="must look like"):
            table.parse_variant(bad)


def _write(run_dir: Path, results: dict) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "comparison.json").write_text(json.dumps(results))


def test_merge_orders_methods_selects_pin_on_validation_and_flags_missing_runs(table, tmp_path):
    def entry(test_miou, val_miou):
        return {"held_out": {"miou": test_miou, "center_corr": 0.1}, "val": {"miou": val_miou}, "train_samples": 10}

    # The better *test* score belongs to the variant with the worse validation score: selection must not peek.
    _write(tmp_path / "a", {"pin": entry(0.40, 0.20), "full_image": entry(0.29, 0.30), "raw": entry(0.0, 0.0)})
    _write(tmp_path / "b", {"pin": entry(0.25, 0.35)})
    merged = table.merge(tmp_path, ["a", "b", "never_ran"])
    rows = merged["rows"]
    assert [(r["variant"], r["method"]) for r in rows] == [
        ("a", "raw"),
        ("a", "full_image"),
        ("a", "pin"),
        ("b", "pin"),
        ("never_ran", "?"),
    ]
    selected = [r for r in rows if r.get("selected")]
    assert [(r["variant"], r["method"]) for r in selected] == [("b", "pin")]
    md = table.table_markdown(merged, "t")
    assert "| b | pin ← selected on val | 0.250 |" in md
    assert "| never_ran | (did not finish) |" in md


def test_ridge_r2_recovers_a_linear_map_and_not_noise(probe):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 50))
    w = rng.normal(size=(50, 4))
    assert probe.ridge_r2(x, x @ w) > 0.9
    assert probe.ridge_r2(x, rng.normal(size=(400, 4))) < 0.1


def test_slot_prefix_places_each_object_in_its_own_slot(probe):
    torch.manual_seed(0)
    writer = probe.SlotPrefix(
        ["red", "blue"], ["star", "moon"], grid=16, dim=8, slots=4, per_slot=2, with_identity=True
    )
    obj = NS(grid_box=(1, 2, 5, 9), colour="blue", shape="moon")
    code = writer.encode(obj)
    assert code.shape == (4 * 16 + 4,)
    assert code.nonzero().flatten().tolist() == [1, 16 + 2, 32 + 5, 48 + 9, 64 + 1, 64 + 2 + 1]
    out = writer([[obj], [obj, obj]], np.random.default_rng(0))
    assert out.shape == (2, 8, 8)
    filled = (out.abs().sum(-1) > 0).view(2, 4, 2).all(-1)  # per sample and slot: written?
    assert filled.sum(1).tolist() == [1, 2]  # one slot per object, the others stay zero


def test_region_prefix_is_the_mean_cell_code_over_the_object(probe):
    torch.manual_seed(0)
    writer = probe.RegionPrefix(grid=4, dim=3, n_prefix=2)
    small, large = NS(grid_box=(1, 1, 1, 1)), NS(grid_box=(0, 0, 1, 1))  # one cell; cells (0,0),(1,0),(0,1),(1,1)
    out = writer([[small], [large]], np.random.default_rng(0))
    assert out.shape == (2, 2, 3)
    code = writer.code.detach()
    torch.testing.assert_close(out[0].flatten(), code[1 * 4 + 1])
    torch.testing.assert_close(out[1].flatten(), code[[0, 1, 4, 5]].mean(0))


def test_cell_masks_cover_the_object_cells_after_the_cls_token(probe):
    boxes = [(1, 0, 2, 1)]
    masks = probe._cell_masks(boxes, n_tokens=17, grid=4)
    assert masks.shape == (1, 17) and masks[0, 0] == 0  # the CLS token is never the object
    assert (masks[0, 1:].view(4, 4).nonzero().tolist()) == [[0, 1], [0, 2], [1, 1], [1, 2]]
    with pytest.raises(ValueError, match="cannot hold a 4x4 patch grid"):
        probe._cell_masks(boxes, n_tokens=9, grid=4)


def test_insert_variants_zero_mean_and_clip():
    variants = load_benchmark("pin_insert_variants")
    pi = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    original = lambda self: pi  # noqa: E731
    zero = variants.variant_forward("zero_mean", original)(None)
    torch.testing.assert_close(zero.mean(0), torch.zeros(2))
    clipped = variants.variant_forward("clip:2", original)(None)
    torch.testing.assert_close(clipped, torch.tensor([[1.2, 1.6], [0.0, 1.0]]))  # row 1 (norm 1) is kept
    with pytest.raises(ValueError, match="unknown variant"):
        variants.variant_forward("bigger", original)


def test_insert_variants_values_only_and_keys_only_split_the_path():
    """With the Q-Former's key weights zeroed, attention ignores its input: full PIN must then equal values-only PIN,
    and keys-only PIN must equal no PIN. With the real key weights, values-only differs from both."""
    from transformers import Blip2Processor

    from groundvlm.modeling import PinForLocalization, modeling_pin
    from groundvlm.processing import PinProcessor
    from tests._pin_tiny import blip_image_processor, make_tokenizer, tiny_blip2

    variants = load_benchmark("pin_insert_variants")
    tokenizer = make_tokenizer("opt")
    torch.manual_seed(0)
    base = tiny_blip2(tokenizer)
    pin = PinForLocalization.from_base(base).eval()
    processor = PinProcessor.from_base_processor(
        Blip2Processor(image_processor=blip_image_processor(), tokenizer=tokenizer, num_query_tokens=4)
    )
    from PIL import Image

    inputs = processor(images=[Image.new("RGB", (64, 48), (200, 30, 30))], objects=["cat"])
    original = modeling_pin.PinForLocalization._insert_active

    def logits(variant=None, use_pin=True):
        if variant:
            modeling_pin.PinForLocalization._insert_active = variants.split_insert_active(variant)
        try:
            with torch.no_grad():
                return pin(**inputs, use_pin=use_pin).logits
        finally:
            modeling_pin.PinForLocalization._insert_active = original

    with torch.no_grad():
        # A π that varies over positions (a constant shift of every key leaves the softmax unchanged), and attention
        # sharper than the random init's near-uniform one, so that the keys matter.
        pin.pin.psi[-1].weight.normal_(0, 1)
        base.query_tokens.normal_(0, 1)  # transformers starts them at zero: zero queries attend uniformly
        for name, module in base.named_modules():
            if name.endswith("crossattention.attention.key"):
                module.weight.mul_(50)
    none, full, values = logits(use_pin=False), logits(), logits("value")
    assert (values - none).abs().max() > 1e-4 and (values - full).abs().max() > 1e-4
    with torch.no_grad():
        for name, module in base.named_modules():
            if name.endswith("crossattention.attention.key"):
                module.weight.zero_()
    torch.testing.assert_close(logits("value"), logits())
    torch.testing.assert_close(logits("key"), logits(use_pin=False))
    with pytest.raises(ValueError, match="unknown variant"):
        variants.variant_forward("values", lambda self: None)
