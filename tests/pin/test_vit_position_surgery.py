"""benchmarks/vit_position_surgery.py on the committed caption VL-LLM: adding the 2-D sine-cosine table to its ViT's
position embeddings makes the output tokens say where they are (the read-out RESULTS.md reports: 0.26 / 0.41 before,
0.94 / 0.94 after), changes nothing else, and the saved folder loads with its processor."""

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import groundvlm.modeling  # noqa: F401  (registers the auto classes)
import groundvlm.processing  # noqa: F401
from groundvlm.recipes.toyworld.vision import IMAGE_SIZE, PATCH_SIZE, sincos_2d
from tests._benchmarks import load_benchmark

BASE = str(Path(__file__).resolve().parents[2] / "recipes" / "toy_checkpoints" / "vlm-caption")


def test_surgery_adds_the_sincos_table_and_the_tokens_learn_where_they_are(tmp_path):
    out = load_benchmark("vit_position_surgery").main([BASE, str(tmp_path)])
    before, after = out["before"], out["after"]
    assert after["column_r2"] > 0.9 and after["row_r2"] > 0.9
    assert after["column_r2"] > before["column_r2"] + 0.3 and after["row_r2"] > before["row_r2"] + 0.3

    source = AutoModelForImageTextToText.from_pretrained(BASE).state_dict()
    changed = AutoModelForImageTextToText.from_pretrained(tmp_path).state_dict()
    AutoProcessor.from_pretrained(tmp_path)
    key = "vision_model.embeddings.position_embedding"
    table = sincos_2d(IMAGE_SIZE // PATCH_SIZE, changed[key].shape[-1])
    torch.testing.assert_close(changed[key][0, 1:], source[key][0, 1:] + table)
    torch.testing.assert_close(changed[key][0, 0], source[key][0, 0])  # the CLS position is left as it was
    assert all(torch.equal(changed[k], v) for k, v in source.items() if k != key)
