"""benchmarks/lookup_base.py: a VLM's LM goes out and comes back unchanged; a taught LM replaces only the LM's
weights; an LM of another architecture is refused; the swapped base is gated."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests._benchmarks import load_benchmark

lookup_base = load_benchmark("lookup_base")
REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "recipes" / "toy_checkpoints" / "vlm-caption"


def test_extract_then_swap_back_changes_only_the_lm_and_gates_the_base(tmp_path):
    lookup_base.main(["extract", "--vlm", str(BASE), "--out", str(tmp_path / "lm")])
    lm = load_file(tmp_path / "lm" / "model.safetensors")
    # a "taught" LM: the same one with one weight moved
    from transformers import AutoModelForCausalLM

    taught = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    with torch.no_grad():
        taught.model.decoder.final_layer_norm.bias.add_(1.0)
    taught.save_pretrained(tmp_path / "taught")
    lookup_base.main(["swap", "--vlm", str(BASE), "--lm", str(tmp_path / "taught"), "--out", str(tmp_path / "vlm"),
                      "--eval-images", "2"])  # fmt: skip
    before, after = load_file(BASE / "model.safetensors"), load_file(tmp_path / "vlm" / "model.safetensors")
    assert set(before) == set(after)
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == {"language_model.model.decoder.final_layer_norm.bias"}
    assert torch.equal(
        after["language_model.model.decoder.final_layer_norm.bias"], lm["model.decoder.final_layer_norm.bias"] + 1
    )
    report = json.loads((tmp_path / "vlm" / "gates.json").read_text())
    assert set(report["gates"]) == {"name_recall", "raw_box_parse_rate", "box_loss_ratio", "raw_miou_held_out",
                                    "binding_accuracy", "raw_center_r_held_out"}  # fmt: skip
    assert report["checks"]["binding"]["questions"] > 0
    assert report["checks"]["held_out_images"]["images"] == 2


def test_swap_refuses_an_lm_of_another_architecture(tmp_path):
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        lookup_base.swap(str(BASE), str(REPO / "recipes" / "toy_checkpoints" / "lm-llama"), tmp_path / "vlm", 1)


def test_swap_refuses_an_lm_whose_tokenizer_has_another_vocabulary(tmp_path):
    from transformers import AutoTokenizer

    lookup_base.main(["extract", "--vlm", str(BASE), "--out", str(tmp_path / "lm")])
    AutoTokenizer.from_pretrained(REPO / "recipes" / "toy_checkpoints" / "tokenizer-llama").save_pretrained(
        tmp_path / "lm"
    )
    with pytest.raises(ValueError, match="another vocabulary"):
        lookup_base.swap(str(BASE), str(tmp_path / "lm"), tmp_path / "vlm", 1)


def test_extract_from_a_checkpoint_takes_the_processor_from_its_base(tmp_path):
    """A Trainer checkpoint holds the model only: `--processor` names the folder whose processor goes with it."""
    import shutil

    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(BASE / name, checkpoint / name)
    with pytest.raises(OSError, match="name the folder of the base"):
        lookup_base.main(["extract", "--vlm", str(checkpoint), "--out", str(tmp_path / "none")])
    lookup_base.main(["extract", "--vlm", str(checkpoint), "--processor", str(BASE), "--out", str(tmp_path / "lm")])
    assert (tmp_path / "lm" / "tokenizer.json").is_file()
    extracted = load_file(tmp_path / "lm" / "model.safetensors")
    base = load_file(BASE / "model.safetensors")
    assert all(torch.equal(extracted[k], base[f"language_model.{k}"]) for k in extracted)
