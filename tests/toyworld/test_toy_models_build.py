"""Toy base models, build level: toy_asset / the build CLI on the tiny "test" preset (cache, redo, loading)."""

import json

import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    Blip2VisionModel,
)

from groundvlm.recipes import toyworld
from groundvlm.recipes.toyworld import MAIN_ARTEFACTS, read_build_info, toy_asset


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache shared by the tests of this file, holding the default (main-job) build."""
    root = tmp_path_factory.mktemp("toycache")
    assert toyworld.main(["build", "--preset", "test", "--cache-dir", str(root)]) == 0
    return root


def _info_bytes(folder):
    return (folder / "build_info.json").read_bytes()


def test_default_build_makes_the_main_artefacts(cache):
    base = cache / "toyworld" / "test"
    for name in MAIN_ARTEFACTS:
        info = read_build_info(base / name)
        assert info is not None and info["artefact"] == name and info["preset"] == "test" and info["seed"] == 0
        assert {"seconds", "metrics", "versions", "command", "fingerprint"} <= set(info)
    assert read_build_info(base / "lm-llama") is None  # not part of the default build


def test_lm_and_tokenizer_load_with_auto_classes(cache):
    folder = toy_asset("lm-opt-small", preset="test", cache_dir=cache)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "OPTForCausalLM"
    assert tok("a red star").input_ids[0] == 2 == tok.bos_token_id  # OPT: </s> as BOS
    assert model.config.vocab_size == len(tok)
    metrics = read_build_info(folder)["metrics"]
    assert {"final_loss", "eval_loss", "vqa_next_token_accuracy", "box_syntax_rate"} <= set(metrics)
    # The LM's tokenizer is the tokenizer artefact's: same vocabulary and merges.
    tok_dir = toy_asset("tokenizer-opt", preset="test", cache_dir=cache)
    model_json = json.loads((folder / "tokenizer.json").read_text())["model"]
    assert model_json == json.loads((tok_dir / "tokenizer.json").read_text())["model"]


def test_vision_encoder_loads_with_its_processor(cache):
    folder = toy_asset("vision-blip2", preset="test", cache_dir=cache)
    model = Blip2VisionModel.from_pretrained(folder)
    assert model.config.initializer_range == 0.02 and model.config.image_size == 112 and model.config.patch_size == 7
    processor = AutoImageProcessor.from_pretrained(folder)
    assert processor.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    metrics = read_build_info(folder)["metrics"]
    assert {"held_out_name_recall", "held_out_colour_recall", "validation_name_recall"} <= set(metrics)
    labels = json.loads((folder / "probe_labels.json").read_text())
    assert "category:red heart" in labels  # held-out categories are seen by base models
    assert set(metrics["token_position_r2"]) == {"column_r2", "row_r2"}


def test_position_keeping_vision_encoder_is_its_own_artefact(cache):
    """vision-blip2-pos: the BLIP-2-shaped ViT with sine-cosine-initialised positions, fingerprinted apart from
    vision-blip2 (whose fingerprint does not change), and its tokens say where they are."""
    from groundvlm.recipes.toyworld import build
    from groundvlm.recipes.toyworld.vision import sincos_2d

    assert "position_init" not in build._spec("vision-blip2", "test")
    assert build._spec("vision-blip2-pos", "test")["position_init"] == "sincos"
    folder = toy_asset("vision-blip2-pos", preset="test", cache_dir=cache)
    model = Blip2VisionModel.from_pretrained(folder)
    plain = Blip2VisionModel.from_pretrained(toy_asset("vision-blip2", preset="test", cache_dir=cache))
    # A few training steps move the table only a little from its sine-cosine start (the plain one starts near 0).
    table = model.embeddings.position_embedding[0, 1:].detach()
    assert torch.nn.functional.cosine_similarity(table.flatten(), sincos_2d(16, 32).flatten(), dim=0) > 0.9
    assert plain.embeddings.position_embedding.detach().norm() < 0.2 * table.norm()
    r2 = read_build_info(folder)["metrics"]["token_position_r2"]
    assert min(r2.values()) > 0.5, r2


def test_data_sample_is_a_coco_export(cache):
    from pycocotools.coco import COCO

    folder = toy_asset("data", preset="test", cache_dir=cache)
    for split in ("train", "validation", "held_out"):
        ann = next((folder / split).glob("*.json"))
        coco = COCO(str(ann))
        assert len(coco.getImgIds()) == toyworld.PRESETS["test"].data_scenes_per_split
        assert len(coco.getAnnIds()) >= len(coco.getImgIds())


def test_second_build_reuses_the_cache(cache, capsys):
    base = cache / "toyworld" / "test"
    before = {n: _info_bytes(base / n) for n in MAIN_ARTEFACTS}
    assert toyworld.main(["build", "--preset", "test", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert {n: _info_bytes(base / n) for n in MAIN_ARTEFACTS} == before
    assert out.count("(reused") == len(MAIN_ARTEFACTS) and "building" not in out
    for name in MAIN_ARTEFACTS:
        assert f"{name:<16} cached" in out and str(base / name) in out  # the table says where it is


def test_interrupted_build_is_redone(cache, capsys):
    folder = toy_asset("lm-opt-small", preset="test", cache_dir=cache)
    tok_info = _info_bytes(toy_asset("tokenizer-opt", preset="test", cache_dir=cache))
    old = read_build_info(folder)
    (folder / "build_info.json").unlink()  # as if killed before the end
    (folder / "model.safetensors").unlink()
    capsys.readouterr()
    assert toy_asset("lm-opt-small", preset="test", cache_dir=cache) == folder
    out = capsys.readouterr().out
    assert "lm-opt-small: interrupted build" in out and "tokenizer-opt" not in out  # its tokenizer is reused
    assert _info_bytes(toy_asset("tokenizer-opt", preset="test", cache_dir=cache)) == tok_info
    new = read_build_info(folder)
    assert new is not None and (folder / "model.safetensors").is_file()
    assert new["built_at"] >= old["built_at"] and new["fingerprint"] == old["fingerprint"]
    # Deterministic from the seed: the rebuilt LM reaches the same loss.
    assert new["metrics"]["final_loss"] == pytest.approx(old["metrics"]["final_loss"], abs=1e-4)


def test_stale_fingerprint_is_rebuilt(cache, capsys):
    folder = toy_asset("tokenizer-t5", preset="test", cache_dir=cache)
    info = read_build_info(folder)
    info["fingerprint"] = "stale"
    (folder / "build_info.json").write_text(json.dumps(info))
    capsys.readouterr()
    toy_asset("tokenizer-t5", preset="test", cache_dir=cache)
    assert "built with other settings" in capsys.readouterr().out
    assert read_build_info(folder)["fingerprint"] != "stale"


def test_other_families_build_and_load(cache):
    t5 = toy_asset("lm-t5", preset="test", cache_dir=cache)
    assert type(AutoModelForSeq2SeqLM.from_pretrained(t5)).__name__ == "T5ForConditionalGeneration"
    tok = AutoTokenizer.from_pretrained(t5)
    ids = tok("a red star").input_ids
    assert ids[-1] == tok.eos_token_id == 1 and tok.bos_token is None
    llama = toy_asset("lm-llama", preset="test", cache_dir=cache)
    assert type(AutoModelForCausalLM.from_pretrained(llama)).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(llama)("a red star").input_ids[0] == 1


def test_bad_names_are_refused(cache):
    with pytest.raises(ValueError, match="unknown toy artefact"):
        toy_asset("lm-gpt2", preset="test", cache_dir=cache)
    with pytest.raises(ValueError, match="unknown preset"):
        toy_asset("data", preset="tpu", cache_dir=cache)
    with pytest.raises(SystemExit, match="unknown artefact"):
        toyworld.main(["build", "--preset", "test", "--cache-dir", str(cache), "--only", "vision-eva"])


def test_list_shows_build_state(cache, capsys):
    assert toyworld.main(["list", "--preset", "test", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  test")}
    assert "built" in lines["vision-blip2"] and lines["vision-dinov2"].rstrip().endswith("-")
    legend = out[out.index("legend:") :]  # every artefact family and both states are explained
    assert "not built yet" in legend
    for name in toyworld.ARTEFACTS:
        assert f"\n  {name} " in legend, name
