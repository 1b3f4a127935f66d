"""PIN recipe: curriculum data, collator labels, feature cache, baselines' trainable sets, end-to-end main()."""

import json
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Blip2Processor, BlipImageProcessor

from groundvlm.modeling import PinForLocalization
from groundvlm.modeling.configuration_vpgtrans import VPGTransConfig
from groundvlm.modeling.modeling_vpgtrans import VPGTransModel
from groundvlm.processing import PinProcessor
from groundvlm.recipes import pin as pin_recipe
from groundvlm.recipes.systems.pin import models as pin_models
from groundvlm.recipes.systems.pin.arguments import PinArguments, PinTrainingArguments
from groundvlm.recipes.systems.pin.baselines import PeftBaseline, check_method, trainable_parameter_names
from groundvlm.recipes.systems.pin.data import (
    EpochBlockSampler,
    FreshSceneSet,
    PinCollator,
    PinTrainingSet,
    build_pool,
)
from tests._pin_tiny import make_tokenizer

S = 112
TRAIN = ["red star", "blue ring", "green circle"]
HELD = ["pink heart", "white moon"]


class SquareWorld:
    """A scene source with coloured rectangles on 7-px cells; `categories` decides the names it draws."""

    def __init__(self, seed, categories, image_size=S):
        self.seed, self.categories, self.size = seed, categories, image_size

    def scene(self, i):
        rng = np.random.default_rng([self.seed, i])
        image = np.full((self.size, self.size, 3), 90, np.uint8)
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            x1, y1 = (int(v) * 7 for v in rng.integers(0, 10, 2))
            w, h = (int(v) * 7 for v in rng.integers(2, 6, 2))
            image[y1 : y1 + h, x1 : x1 + w] = rng.integers(0, 255, 3)
            objects.append(
                NS(name=self.categories[int(rng.integers(len(self.categories)))], box=[x1, y1, x1 + w, y1 + h])
            )
        return NS(image=Image.fromarray(image), objects=objects)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def tiny_base(tok):
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=S,
        patch_size=28,
        initializer_range=0.02,
    )
    qformer = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        encoder_hidden_size=32,
        vocab_size=320,
    )
    text = dict(
        model_type="opt",
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = VPGTransConfig(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=4,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        architectures=["VPGTransModel"],
    )
    torch.manual_seed(0)
    return VPGTransModel(config).eval()


def processor(tok):
    return PinProcessor(BlipImageProcessor(size={"height": S, "width": S}), tok, num_image_tokens=4, image_size=S)


def test_curriculum_order_object_counts_and_no_held_out_categories():
    source = SquareWorld(0, TRAIN)
    main = build_pool(source, 6, TRAIN)
    curriculum = build_pool(source, 6, TRAIN, num_objects=3, start=1000)
    assert all(len(objs) == 3 for objs in curriculum.objects)
    assert {len(objs) for objs in main.objects} - {3}  # the main pool keeps the source's 1-3 objects
    data = PinTrainingSet(main, epochs=4, curriculum_pool=curriculum, name_reconstruction_epochs=1, seed=0)
    order = list(EpochBlockSampler(6, 4, seed=0))
    assert sorted(order[:6]) == list(range(6)) and sorted(order[6:12]) == list(range(6, 12))
    items = [data[k] for k in order]
    assert all(it["reconstruct_name"] for it in items[:6]) and not any(it["reconstruct_name"] for it in items[6:])
    for k in range(6):  # the supervised object is one of that image's objects
        assert (data[k]["name"], data[k]["box"]) in [(n, b) for n, b in curriculum.objects[k]]
    assert {it["name"] for it in items} <= set(TRAIN)
    with pytest.raises(ValueError, match="held-out categories must never reach PIN training"):
        build_pool(SquareWorld(1, HELD), 3, TRAIN)


def test_collator_labels_cover_only_the_target_span(tok):
    proc = processor(tok)
    image = np.zeros((S, S, 3), np.uint8)
    items = [
        {"image": image, "name": "red star", "box": [14, 28, 56, 112], "reconstruct_name": False},
        {"image": image, "name": "blue ring", "box": [0, 0, 7, 7], "reconstruct_name": True},
    ]
    batch = PinCollator(proc)(items)
    assert batch["pixel_values"].shape == (2, 3, S, S)
    supervised = [tok.decode(row[row != -100]) for row in batch["labels"]]
    # 112 px / 16 cells = 7-px ticks; box-only supervises " [x1,y1,x2,y2]</s>", curriculum also the name.
    assert supervised[0] == " [14,28,56,112]</s>"
    assert supervised[1] == " blue ring located at [0,0,7,7] </s>"
    for row, labels in zip(batch["input_ids"], batch["labels"]):
        kept = labels != -100
        assert torch.equal(row[kept], labels[kept])


def test_cached_features_give_the_uncached_loss(tok):
    proc = processor(tok)
    model = PinForLocalization.from_base(tiny_base(tok))
    with torch.no_grad():
        for p in model.pin.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pool = build_pool(SquareWorld(0, TRAIN), 4, TRAIN)
    feats = model.encode_images(proc.image_processor(list(pool.images), return_tensors="pt")["pixel_values"])
    plain = PinTrainingSet(pool, epochs=1, seed=3)
    cached = PinTrainingSet(pool, epochs=1, seed=3, main_features=feats)
    collate = PinCollator(proc)
    a, b = collate([plain[i] for i in range(4)]), collate([cached[i] for i in range(4)])
    assert "vision_embeds" in b and "pixel_values" not in b
    model.train()
    torch.testing.assert_close(model(**a).loss, model(**b).loss, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "method, expected",
    [("coop", {"prompt": (16, 32)}), ("vpt_f", {"prompt": (100, 32)}), ("vpt_phi", {"prompt": (100, 32)})],
)
def test_prompt_baselines_train_only_their_tokens(tok, method, expected):
    model = PeftBaseline(
        PinForLocalization.from_base(tiny_base(tok)),
        method,
        num_tokens=expected["prompt"][0],
        coop_slot_id=tok.unk_token_id,
    )
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert shapes == expected


def test_lora_baseline_trains_only_vision_lora_and_pin_only_psi(tok):
    model = PeftBaseline(PinForLocalization.from_base(tiny_base(tok)), "lora_phi", lora_r=16, lora_alpha=16)
    names = trainable_parameter_names(model)
    # 2 layers x (qkv, projection) x (A, B)
    assert len(names) == 8 and all(".vision_model.encoder.layers." in n and "lora_" in n for n in names)
    assert sum(p.numel() for n, p in model.named_parameters() if n in names) == 2 * (
        16 * 32 + 96 * 16 + 16 * 32 + 32 * 16
    )
    pin = PinForLocalization.from_base(tiny_base(tok))
    assert all(n.startswith("pin.psi.") for n in trainable_parameter_names(pin))


def test_baselines_change_outputs_and_reach_gradients(tok):
    proc = processor(tok)
    pool = build_pool(SquareWorld(0, TRAIN), 2, TRAIN)
    for method in ("coop", "vpt_f", "vpt_phi"):
        p = proc if method != "coop" else pin_models.method_processor("coop", proc, PinArguments())
        batch = PinCollator(p)([PinTrainingSet(pool, epochs=1)[i] for i in range(2)])
        model = PeftBaseline(
            PinForLocalization.from_base(tiny_base(tok)), method, num_tokens=16, coop_slot_id=tok.unk_token_id
        )
        model(**batch).loss.backward()
        assert model.prompt.grad is not None and model.prompt.grad.abs().sum() > 0, method


def test_clear_errors(tok, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown method 'dino'"):
        check_method("dino")
    with pytest.raises(ValueError, match="cannot be cached"):
        PeftBaseline(PinForLocalization.from_base(tiny_base(tok)), "lora_phi").encode_images(None)
    from groundvlm.recipes import toyworld

    monkeypatch.setattr(toyworld, "ARTEFACTS", tuple(a for a in toyworld.ARTEFACTS if a != "vlm-caption"))
    with pytest.raises(FileNotFoundError, match="toy asset 'vlm-caption'"):
        pin_models.resolve_base_model(PinArguments(), "cpu")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a Hub id"):
        pin_models.load_base(str(tmp_path / "missing"), torch.device("cpu"))


def test_fresh_scenes_compose_a_new_scene_per_sample_curriculum_first_and_deterministic():
    source = SquareWorld(0, TRAIN)
    data = FreshSceneSet(source, 40, TRAIN, curriculum_samples=10, curriculum_num_objects=3, seed=1)
    items = [data[k] for k in range(40)]
    assert all(it["reconstruct_name"] for it in items[:10]) and not any(it["reconstruct_name"] for it in items[10:])
    assert len({it["image"].tobytes() for it in items}) == 40  # no image is seen twice
    for k in range(10, 40):  # the main stream is the source's scene k; the target is one of its objects
        objs = source.scene(k).objects
        assert (items[k]["name"], items[k]["box"]) in [(o.name, [float(v) for v in o.box]) for o in objs]
    again = FreshSceneSet(SquareWorld(0, TRAIN), 40, TRAIN, curriculum_samples=10, seed=1)
    assert all(
        again[k]["box"] == items[k]["box"] and (again[k]["image"] == items[k]["image"]).all() for k in (0, 9, 33)
    )
    assert items[0]["image"].dtype == np.uint8 and items[0]["image"].shape == (S, S, 3)
    with pytest.raises(ValueError, match="outside the training categories"):
        FreshSceneSet(SquareWorld(1, HELD), 3, TRAIN)[0]
    with pytest.raises(ValueError, match="without exactly 7 objects"):
        FreshSceneSet(source, 3, TRAIN, curriculum_samples=3, curriculum_num_objects=7)[0]
    with pytest.raises(ValueError, match="curriculum_samples"):
        FreshSceneSet(source, 3, TRAIN, curriculum_samples=4)


def _fresh_scene_run(tok, tmp_path, monkeypatch) -> tuple[list[str], Path, list]:
    """Arguments of a tiny fresh-scenes PIN run on a saved tiny base, its output folder, and the list that records
    which scenes the run composes."""
    base = tmp_path / "base"
    tiny_base(tok).save_pretrained(base)
    Blip2Processor(BlipImageProcessor(size={"height": S, "width": S}), tok, num_query_tokens=4).save_pretrained(base)
    from groundvlm.recipes import toyworld as data

    seen = []

    class Recording(SquareWorld):
        def scene(self, i):
            seen.append((self.seed, i))
            return super().scene(i)

    worlds = {"train": TRAIN, "held_out": HELD}
    monkeypatch.setattr(data, "ToyWorld", lambda seed, split, **kw: Recording(seed, worlds[split]), raising=False)
    monkeypatch.setattr(data, "DEFAULT_SPLIT", NS(train=TRAIN, held_out=HELD), raising=False)
    out = tmp_path / "run"
    args = ["--base_model", str(base), "--output_dir", str(out), "--fresh_scenes", "true", "--train_images", "8"]
    args += ["--val_images", "2", "--test_images", "0", "--name_reconstruction_fraction", "0.25"]
    args += ["--per_device_train_batch_size", "4", "--use_cpu", "true", "--method", "pin"]
    args += ["--save_steps", "2", "--dataloader_num_workers", "0"]
    return args, out, seen


def test_fresh_scenes_train_and_resume_through_the_recipe(tok, tmp_path, monkeypatch):
    args, out, seen = _fresh_scene_run(tok, tmp_path, monkeypatch)
    first = pin_recipe.main(args + ["--epochs", "1"])  # 8 samples, 2 steps
    assert first["pin"]["train_samples"] == 8
    # The first quarter (items 0-1) came from the curriculum stream, items 2-7 are the source's scenes 2-7.
    assert [i for seed, i in seen if seed == 0 and i >= FreshSceneSet.CURRICULUM_OFFSET][:1] == [
        FreshSceneSet.CURRICULUM_OFFSET
    ]
    assert (out / "pin" / "checkpoint-2" / "model.safetensors").is_file()
    seen.clear()
    second = pin_recipe.main(args + ["--epochs", "2", "--resume", "true"])  # resumes at step 2 of 4
    assert second["pin"]["train_samples"] == 16
    # The 4 curriculum samples (items 0-3) were consumed before the checkpoint: the resumed run composes none of
    # them, only items 8-15 (after the random baseline's 8-scene box pool, scenes 0-7 of the same source).
    assert not [i for seed, i in seen if seed == 0 and i >= FreshSceneSet.CURRICULUM_OFFSET]
    assert [i for seed, i in seen if seed == 0] == list(range(8)) + list(range(8, 16))


def test_time_budget_pauses_pin_at_a_checkpoint_and_the_same_command_finishes(tok, tmp_path, monkeypatch):
    """--max_train_minutes (a budget below one step) stops PIN's training after step 1 with checkpoint-1 saved and no
    evaluation; the same command without it resumes there and finishes the run."""
    from groundvlm.recipes.common.checkpointing import TrainingPaused, is_complete_checkpoint

    args, out, _ = _fresh_scene_run(tok, tmp_path, monkeypatch)
    with pytest.raises(TrainingPaused, match="paused at step 1 of 2"):
        pin_recipe.main(args + ["--epochs", "1", "--max_train_minutes", "1e-6"])
    assert is_complete_checkpoint(out / "pin" / "checkpoint-1")
    assert not (out / "comparison.json").exists() and not (out / "pin" / "final").exists()
    finished = pin_recipe.main(args + ["--epochs", "1"])
    assert finished["pin"]["train_samples"] == 8
    assert "Resuming from checkpoint" in (out / "train.log").read_text()
    assert (out / "pin" / "final").is_dir()


def test_main_end_to_end_writes_table_and_png(tok, tmp_path, monkeypatch):
    base = tmp_path / "base"
    tiny_base(tok).save_pretrained(base)
    Blip2Processor(BlipImageProcessor(size={"height": S, "width": S}), tok, num_query_tokens=4).save_pretrained(base)
    from groundvlm.recipes import toyworld as data

    # The scene source of the recipe; the rest of main() is the real pipeline.
    worlds = {"train": TRAIN, "held_out": HELD}
    monkeypatch.setattr(data, "ToyWorld", lambda seed, split, **kw: SquareWorld(seed, worlds[split]), raising=False)
    monkeypatch.setattr(data, "DEFAULT_SPLIT", NS(train=TRAIN, held_out=HELD), raising=False)
    out = tmp_path / "run"
    results = pin_recipe.main(
        [
            "--base_model",
            str(base),
            "--output_dir",
            str(out),
            "--train_images",
            "6",
            "--val_images",
            "2",
            "--test_images",
            "2",
            "--epochs",
            "2",
            "--name_reconstruction_fraction",
            "0.5",
            "--per_device_train_batch_size",
            "4",
            "--use_cpu",
            "true",
            "--methods",
            "raw",
            "random",
            "full_image",
            "pin",
        ]
    )
    assert list(results) == ["raw", "random", "full_image", "pin"]
    assert results["pin"]["train_samples"] == 12 and results["pin"]["trainable_parameters"] > 0
    assert (out / "pin" / "final" / "model.safetensors").is_file()
    table = (out / "comparison.md").read_text()
    assert "| PIN (ours) |" in table and "| full-image box |" in table
    assert Image.open(out / "predictions.png").size[0] > 0
    assert results["full_image"]["held_out"]["parse_ok"] == 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"raw", "random", "full_image", "pin"}  # the untrained baselines too
    assert metrics["random"]["held_out"]["parse_ok"] == results["random"]["held_out"]["parse_ok"]
    assert metrics["comparison"]["verdict"].startswith("PIN (ours) ")  # what the model card repeats
    log = (out / "train.log").read_text()
    assert "Results:" in log and "| PIN (ours) |" in log  # the comparison is kept with the run


def test_toy_cpu_yaml_spells_out_the_no_argument_defaults():
    """`accelerate launch recipes/pin.py` with no arguments runs the dataclass defaults; recipes/pin/toy_cpu.yaml
    documents them. They must not drift apart."""
    import dataclasses

    import yaml

    from groundvlm.recipes.common.arguments import resolve_config_path

    spelled = yaml.safe_load(resolve_config_path("pin", "toy_cpu").read_text())

    def default(f):
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    defaults = {f.name: default(f) for f in dataclasses.fields(PinArguments)}
    training = {f.name: default(f) for f in dataclasses.fields(PinTrainingArguments)}
    for key, value in spelled.items():
        if key in defaults:
            assert defaults[key] == value, key
        elif key in training and key not in ("use_cpu",):
            assert training[key] == value, key


def test_center_correlation_separates_localising_from_constant_boxes():
    from groundvlm.recipes.systems.pin.evaluation import center_correlation

    refs = [[0, 0, 20, 20], [40, 10, 60, 30], [80, 50, 100, 90]]  # centres x 10, 50, 90; y 10, 20, 70
    # x centres 20, 50, 80 (r = 1 with 10/50/90); y centres 10, 40, 40: r(y) = 700 / sqrt(2066.67 * 600) = 0.628619 (by hand)
    preds = [[10, 0, 30, 20], [40, 30, 60, 50], [70, 30, 90, 50]]
    assert center_correlation(preds, refs) == pytest.approx((1.0 + 0.6286186) / 2, abs=1e-6)
    assert np.isnan(center_correlation([[0, 0, 112, 112]] * 3, refs))  # the full-image box carries no signal
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        center_correlation([[0, 0, 1]], [[0, 0, 1]])


@pytest.mark.parametrize("method", ["pin", "vpt_f"])
def test_new_parameters_come_from_the_seed_not_the_global_generator(tok, method):
    """The Trainer seeds only after the model exists and torch's default generator starts from a random seed per
    process: `build_model` must draw ψ / prompts from `seed` whatever state the global generator is in."""
    args = PinArguments()
    proc = processor(tok)

    def trainable(global_seed, seed):
        base = tiny_base(tok)
        torch.manual_seed(global_seed)  # stands in for a fresh process's random start
        model = pin_models.build_model(method, base, args, proc, "tiny", seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    first, second, other_seed = trainable(1, 0), trainable(2, 0), trainable(1, 5)
    assert first.keys() == second.keys() and first
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not all(torch.equal(first[n], other_seed[n]) for n in first)


def test_comparison_says_in_words_whether_pin_beat_the_best_constant_box_and_writes_no_nan(tmp_path):
    import json
    import math

    from groundvlm.recipes.systems.pin.evaluation import verdict, write_comparison

    def entry(miou, r):
        return {"held_out": {"miou": miou, "center_corr": r}}

    tie = {"full_image": entry(0.302, float("nan")), "random": entry(0.176, 0.0), "pin": entry(0.302, -0.03)}
    assert "TIED" in verdict(tie) and "does not localise" in verdict(tie)
    lost = {"full_image": entry(0.302, float("nan")), "pin": entry(0.25, 0.1)}
    assert "did NOT beat" in verdict(lost) and "-0.052" in verdict(lost)
    won = {"full_image": entry(0.30, float("nan")), "random": entry(0.18, 0.0), "pin": entry(0.45, 0.6)}
    assert "beat the best constant baseline (full-image box, 0.300) by +0.150 mIoU" in verdict(won)
    assert "reads object positions" in verdict(won)
    assert verdict({"pin": entry(0.3, 0.0)}) is None
    md, js = write_comparison(tmp_path, tie, "t")
    assert "**Verdict:**" in md.read_text()
    text = js.read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["full_image"]["held_out"]["center_corr"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in loaded["pin"]["held_out"].values())


def test_grid_size_is_one_recipe_argument_checked_against_the_model(tok):
    """`--grid_size` builds the processor and the model; evaluation refuses a model trained on another grid."""
    from groundvlm.recipes.common.arguments import RecipeError
    from groundvlm.recipes.systems.pin.evaluation import predict, samples_from_pool

    with pytest.raises(RecipeError, match="grid_size"):
        PinArguments(grid_size=0)
    args = PinArguments(grid_size=8)
    proc = PinProcessor.from_base_processor(
        Blip2Processor(
            image_processor=BlipImageProcessor(size={"height": S, "width": S}), tokenizer=tok, num_query_tokens=4
        ),
        grid_size=args.grid_size,
    )
    model = pin_models.build_model("pin", tiny_base(tok), args, proc, "base")
    assert (model.config.grid_size, proc.codec.grid_size) == (8, 8)
    samples = samples_from_pool(build_pool(SquareWorld(0, TRAIN), 1, TRAIN))
    with pytest.raises(ValueError, match=r"PinProcessor has grid_size=16 but the model's PinConfig has grid_size=8"):
        predict(model, processor(tok), samples)


def test_max_objects_bounds_the_toy_scenes_and_the_curriculum():
    """`--max_objects 1` gives single-object scenes in every split; a curriculum above it is refused up front."""
    from groundvlm.recipes.common.arguments import RecipeError
    from groundvlm.recipes.systems.pin.data import scene_sources

    with pytest.raises(RecipeError, match="curriculum_num_objects"):
        PinArguments(max_objects=2, curriculum_num_objects=3)
    with pytest.raises(RecipeError, match="max_objects"):
        PinArguments(max_objects=0)
    for max_objects, counts in ((1, {1}), (3, {1, 2, 3})):
        sources = scene_sources(PinArguments(max_objects=max_objects, curriculum_num_objects=1), S, 16)[:3]
        seen = {len(src.scene(i).objects) for src in sources for i in range(40)}
        assert seen == counts
