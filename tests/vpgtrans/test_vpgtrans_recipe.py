"""VPGTrans recipe units: stage freezing, LAVIS optimiser groups, stage-1/stage-2 schedules, speed-up rate,
real-format loaders, BLIP-like Q-Former pretraining pieces, caption name recall."""

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from transformers import Blip2QFormerConfig

from groundvlm.modeling import VPGTransConfig, VPGTransModel
from groundvlm.recipes.common.arguments import RecipeError
from groundvlm.recipes.systems.vpgtrans.arguments import (
    STAGES,
    VPGTRANS_ARGUMENTS,
    VPGTransModelArguments,
    VPGTransTrainingArguments,
)
from groundvlm.recipes.systems.vpgtrans.captioner import location_word_accuracy, object_name_recall
from groundvlm.recipes.systems.vpgtrans.data import load_coco_karpathy, load_gqa, load_vqa
from groundvlm.recipes.systems.vpgtrans.models import freeze_for_stage, qformer_config, trainable_prefixes
from groundvlm.recipes.systems.vpgtrans.qformer import (
    QFormerPretrainer,
    load_pretrained_qformer,
    multimodal_causal_mask,
)
from groundvlm.recipes.systems.vpgtrans.speedup import (
    format_rate,
    markdown_table,
    plot_curves,
    speedup_rate,
    speedup_table,
    vpgtrans_curve,
)
from groundvlm.recipes.systems.vpgtrans.training import (
    TextReplay,
    VPGTransTrainer,
    inner_epoch_cosine_lr,
    lavis_param_groups,
)
from tests._vpgtrans_toys import (
    add_image_token,
    blip2_config,
    opt_text_config,
    opt_tokenizer,
)

FIXTURES = __import__("pathlib").Path(__file__).parents[1] / "fixtures" / "vpgtrans"
COCO = FIXTURES / "coco"


def tiny_model(num_query_tokens=4):
    tok = opt_tokenizer()
    image_id = add_image_token(tok)
    torch.manual_seed(0)
    config = blip2_config(
        opt_text_config(len(tok)), image_id, num_query_tokens=num_query_tokens, config_cls=VPGTransConfig
    )
    return VPGTransModel(config), image_id


def _batch(model, image_id, n_q=4):
    ids = torch.tensor([[image_id] * n_q + [2, 5, 6, 4]] * 2)
    return {
        "pixel_values": torch.randn(2, 3, 16, 16),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids.masked_fill(ids == image_id, -100),
    }


# --------------------------------------------------------------------------------------------- freezing


@pytest.mark.parametrize(
    "stage, unfreeze_lm, expected_roots",
    [
        ("stage1", False, {"language_projection"}),
        ("stage2", False, {"qformer", "query_tokens", "vision_model.post_layernorm", "language_projection"}),
        ("tfs", False, {"qformer", "query_tokens", "vision_model.post_layernorm", "language_projection"}),
        ("inherit", False, {"qformer", "query_tokens", "vision_model.post_layernorm", "language_projection"}),
        (
            "tfs",
            True,
            {"qformer", "query_tokens", "vision_model.post_layernorm", "language_projection", "language_model"},
        ),
    ],
)
def test_stage_trains_exactly_the_reference_modules(stage, unfreeze_lm, expected_roots):
    model, image_id = tiny_model()
    freeze_for_stage(model, stage, unfreeze_lm)
    model.train()
    model(**_batch(model, image_id)).loss.backward()

    def root(name):
        return "vision_model.post_layernorm" if name.startswith("vision_model.post_layernorm.") else name.split(".")[0]

    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    requires = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {root(n) for n in requires} == expected_roots
    assert with_grad <= requires  # frozen modules really get no gradient
    assert {root(n) for n in with_grad} == expected_roots
    # Every ViT weight but the post-LN (= LAVIS ln_vision) is frozen, and the ViT stays in eval mode.
    vit_trainable = {n for n in requires if n.startswith("vision_model.")}
    ln_vision = {"vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"}
    assert vit_trainable == (set() if stage == "stage1" else ln_vision)
    assert not model.vision_model.training and model.qformer.training and model.language_model.training


def test_unknown_training_stage_is_refused():
    with pytest.raises(ValueError, match="does not train"):
        trainable_prefixes("converter")


def test_lavis_param_groups_no_decay_for_bias_norm_and_1d():
    model, _ = tiny_model()
    freeze_for_stage(model, "stage2")
    decay, no_decay = lavis_param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "query_tokens" in decay_names  # 3-D: decayed, as LAVIS
    assert "language_projection.weight" in decay_names
    assert "language_projection.bias" in no_decay_names
    assert "qformer.layernorm.weight" in no_decay_names
    assert "vision_model.post_layernorm.weight" in no_decay_names
    assert not any(n.startswith("language_model.") for n in decay_names | no_decay_names)  # frozen: not optimised


# -------------------------------------------------------------------------------------------- schedules


def _trainer(stage, tmp_path, **kwargs):
    model, _ = tiny_model()
    freeze_for_stage(model, "stage1" if stage == "stage1" else "stage2")
    args = VPGTransTrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=1e-4,
        num_train_epochs=kwargs.pop("epochs", 1),
        warmup_steps=kwargs.pop("warmup_steps", 0),
        report_to="none",
        use_cpu=True,
        **kwargs,
    )
    trainer = VPGTransTrainer(model=model, args=args, stage=stage)
    trainer.create_optimizer_and_scheduler(num_training_steps=kwargs.get("iters_per_inner_epoch", 10) * 10)
    return trainer


def _lrs(trainer, steps):
    out = []
    for _ in range(steps):
        out.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return out


def test_stage1_lr_is_5x_base_and_constant(tmp_path):
    trainer = _trainer("stage1", tmp_path, iters_per_inner_epoch=3)
    assert _lrs(trainer, 30) == pytest.approx([5e-4] * 30)


def test_stage2_cosine_per_inner_epoch_matches_formula(tmp_path):
    # init 1e-4, min 5e-5, 10 inner epochs of 3 steps, no warm-up (VPGTrans stage 2).
    trainer = _trainer("stage2", tmp_path, iters_per_inner_epoch=3, min_lr=5e-5, epochs=10)
    lrs = _lrs(trainer, 30)
    # Hand values: epoch 1: 5e-5 + 5e-5 * 0.5 * (1 + cos(pi/10)) = 5e-5 + 5e-5 * 0.975528 = 9.87764e-5;
    # epoch 5: cos(pi/2) = 0 -> 7.5e-5; epoch 9: 5e-5 + 5e-5 * 0.5 * (1 - 0.951057) = 5.12236e-5.
    assert lrs[0:3] == pytest.approx([1e-4] * 3)
    assert lrs[3:6] == pytest.approx([9.87764e-5] * 3, rel=1e-5)
    assert lrs[15:18] == pytest.approx([7.5e-5] * 3)
    assert lrs[27:30] == pytest.approx([5.12236e-5] * 3, rel=1e-5)


def test_warmup_in_epoch_zero_as_lavis():
    # warm-up from 1e-6 over 2 steps: step 0 -> 1e-6, step 1 -> 1e-6 + 0.5 * (1e-4 - 1e-6), then capped at init.
    values = [inner_epoch_cosine_lr(s, 5, 10, 1e-4, 1e-5, warmup_steps=2, warmup_lr=1e-6) for s in range(5)]
    assert values == pytest.approx([1e-6, 5.05e-5, 1e-4, 1e-4, 1e-4])
    assert inner_epoch_cosine_lr(5, 5, 10, 1e-4, 1e-5) == pytest.approx(
        1e-5 + 9e-5 * 0.5 * (1 + math.cos(math.pi / 10))
    )


# ---------------------------------------------------------------------------------------------- speed-up


def test_speedup_rate_on_hand_made_curves(tmp_path):
    tfs = [10.0, 30.0, 50.0, 50.0, 40.0]  # best 50 first reached at epoch 3
    assert speedup_rate(tfs, [20.0, 51.0, 60.0]) == pytest.approx(3 / 2)
    assert speedup_rate(tfs, [55.0]) == pytest.approx(3.0)
    assert speedup_rate(tfs, [20.0, 50.0, 49.0]) is None  # equal is not better: "-"
    assert format_rate(None) == "-" and format_rate(10 / 3) == "3.3"
    # Stage 1 counts as VPGTrans's epoch 1.
    vt = vpgtrans_curve(
        {"epoch": [1], "cider": [0.4], "vqa_accuracy": [0.1]},
        {"epoch": [1, 2], "step": [5, 10], "cider": [0.6, 0.7], "vqa_accuracy": [0.2, 0.1]},
    )
    assert vt == {"epoch": [1, 2, 3], "cider": [0.4, 0.6, 0.7], "vqa_accuracy": [0.1, 0.2, 0.1]}
    table = speedup_table(
        {"epoch": [1, 2], "cider": [0.3, 0.5], "vqa_accuracy": [0.3, 0.2]}, vt, ["cider", "vqa_accuracy"]
    )
    assert table == {"cider": "1.0", "vqa_accuracy": "-"}  # cider: e_tfs 2 / e_vt 2; vqa never > 0.3
    md = markdown_table({"small->large": table}, ["cider", "vqa_accuracy"])
    assert md.splitlines()[2] == "| small->large | 1.0 | - |"
    png = plot_curves({"TFS": {"epoch": [1, 2], "cider": [0.3, 0.5]}, "VPGTrans": vt}, ["cider"], tmp_path / "fig7.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="non-empty"):
        speedup_rate([], [1.0])


def test_speedup_across_seeds_is_mean_and_sample_std_with_never_counted_apart():
    from groundvlm.recipes.systems.vpgtrans.speedup import across_seeds, format_across_seeds

    tfs = {"epoch": [1, 2, 3, 4], "cider": [0.1, 0.2, 0.3, 0.5]}  # best at epoch 4
    seeds = [
        {"TFS": tfs, "VPGTrans": {"epoch": [1, 2], "cider": [0.2, 0.6]}},  # 4 / 2 = 2
        {"TFS": tfs, "VPGTrans": {"epoch": [1], "cider": [0.9]}},  # 4 / 1 = 4
        {"TFS": tfs, "VPGTrans": {"epoch": [1, 2], "cider": [0.4, 0.5]}},  # never above 0.5
    ]
    stats = across_seeds(seeds, ["cider", "vqa_accuracy"])
    assert stats["cider"]["per_seed"] == [2.0, 4.0, None] and stats["cider"]["never"] == 1
    assert stats["cider"]["mean"] == pytest.approx(3.0) and stats["cider"]["std"] == pytest.approx(2**0.5)
    assert format_across_seeds(stats["cider"]) == "3.0 ± 1.4 (3 seeds, 1 never)"
    assert stats["vqa_accuracy"] == {"per_seed": [], "mean": None, "std": None, "never": 0}
    one = across_seeds(seeds[2:], ["cider"])["cider"]
    assert format_across_seeds(one) == "- (1 of 1 seeds never)"


# ----------------------------------------------------------------------------------------------- loaders


def test_coco_karpathy_lavis_layout():
    train = load_coco_karpathy(COCO / "coco_karpathy_train.json", COCO)
    assert len(train) == 6 and train[0]["text"] == "a red star" and train[1]["text"] == "a red star on the left"
    assert train[0]["image"].mode == "RGB" and train[0]["image"].size == (16, 16)
    val = load_coco_karpathy(COCO / "coco_karpathy_val.json", COCO)
    assert len(val) == 1 and val[0]["references"] == ["a striped star", "an striped star"]


def test_coco_karpathy_original_layout_splits():
    train = load_coco_karpathy(COCO / "dataset_coco.json", COCO, split="train")  # train + restval
    assert len(train) == 4 and {e["text"] for e in train} >= {"two blue rings", "a red star on the left"}
    test = load_coco_karpathy(COCO / "dataset_coco.json", COCO, split="test")
    assert (
        len(test) == 1 and test[0]["references"] == ["a striped star", "an striped star"] and test[0]["image_id"] == "4"
    )
    with pytest.raises(ValueError, match="split"):
        load_coco_karpathy(COCO / "dataset_coco.json", COCO)


def test_vqa_and_gqa_loaders():
    vqa = load_vqa(COCO / "vqa_val2014_questions.json", COCO / "vqa_val2014_annotations.json", COCO / "val2014")
    assert len(vqa) == 2
    assert vqa[0]["question"] == "What colour is the star?" and vqa[0]["answers"].count("red") == 8
    assert len(vqa[1]["answers"]) == 10 and vqa[1]["image"].size == (16, 16)
    gqa = load_gqa(FIXTURES / "gqa" / "testdev_balanced_questions.json", FIXTURES / "gqa" / "images")
    assert [(e["question_id"], e["answers"]) for e in (gqa[0], gqa[1])] == [("201", ["yes"]), ("202", ["star"])]


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_coco_karpathy(tmp_path / "missing.json", tmp_path)
    with pytest.raises(ValueError, match="official jsons"):
        load_vqa(COCO / "coco_karpathy_val.json", COCO / "vqa_val2014_annotations.json", COCO)
    with pytest.raises(ValueError, match="GQA"):
        load_gqa(COCO / "coco_karpathy_val.json", COCO)
    data = load_coco_karpathy(COCO / "coco_karpathy_val.json", tmp_path)  # wrong image root
    with pytest.raises(FileNotFoundError, match="image_root"):
        data[0]


# ------------------------------------------------------------------------------------ Q-Former pretraining


def test_multimodal_causal_mask_hand_values():
    mask = multimodal_causal_mask(torch.tensor([[1, 1, 0]]), num_queries=2)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 1, 0, 0, 0],  # queries see queries only
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # text 0 sees queries + itself
        [1, 1, 1, 1, 0],  # text 1 sees queries + text 0, 1
        [1, 1, 1, 1, 0],  # padding is never attended
    ]


def test_qformer_pretrainer_losses_and_transfer_into_vpgtrans():
    model, _ = tiny_model()
    # The target's own Q-Former config with the text branch switched on (what qformer_pretrain builds).
    config = Blip2QFormerConfig(
        **{**model.config.qformer_config.to_dict(), "use_qformer_text_input": True, "vocab_size": 20}
    )
    vision = model.vision_model
    pre = QFormerPretrainer(vision, config, 4, embed_dim=8).train()
    assert pre.qformer.training and not vision.training
    ids = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 1], [2, 5, 9, 1]])
    out = pre(torch.randn(3, 3, 16, 16), ids, (ids != 1).long())
    assert set(out) == {"loss", "itc", "itm", "itg"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert pre.query_tokens.grad is not None and pre.itm_head.weight.grad is not None
    assert all(p.grad is None for n, p in vision.named_parameters() if not n.startswith("post_layernorm"))
    state = pre.vpgtrans_state_dict()
    assert "qformer.encoder.layer.0.intermediate.dense.weight" in pre.qformer.state_dict().keys() | {
        "qformer." + k for k in pre.qformer.state_dict()
    }
    assert not any(k.endswith(("layer.0.intermediate.dense.weight", "layer.0.output.dense.weight")) for k in state)
    assert "qformer.encoder.layer.0.attention.output.dense.weight" in state
    target, _ = tiny_model()
    load_pretrained_qformer(target, _save(state))
    assert torch.equal(target.query_tokens, pre.query_tokens.detach())
    assert torch.equal(target.qformer.layernorm.weight, pre.qformer.layernorm.weight.detach())
    # A full model folder (e.g. a converted LAVIS stage-1 checkpoint) works too: only the VPG keys are taken.
    folder = Path(tempfile.mkdtemp())
    target.save_pretrained(folder)
    other, _ = tiny_model()
    with torch.no_grad():
        other.language_projection.weight.zero_()
    load_pretrained_qformer(other, folder)
    assert torch.equal(other.query_tokens, pre.query_tokens.detach())
    assert other.language_projection.weight.abs().sum() == 0  # the projector is not part of a Q-Former init


def _save(state):
    import tempfile

    from safetensors.torch import save_file

    path = tempfile.mktemp(suffix=".safetensors")
    save_file(state, path)
    return path


def test_qformer_checkpoint_with_other_hidden_size_is_refused():
    model, _ = tiny_model()
    args = VPGTransModelArguments(qformer_hidden_size=16, qformer_layers=2, qformer_heads=4, num_query_tokens=4)
    pre = QFormerPretrainer(model.vision_model, qformer_config(args, 32, text_input=True, vocab_size=20), 4)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_pretrained_qformer(tiny_model()[0], _save(pre.vpgtrans_state_dict()))
    with pytest.raises(ValueError, match="encoder_hidden_size"):
        QFormerPretrainer(model.vision_model, qformer_config(args, 48, text_input=True), 4)


def test_location_word_accuracy_hand_case():
    from PIL import Image

    from groundvlm.recipes.toyworld import Scene, SceneObject

    def obj(name, box):
        return SceneObject(name, *name.split(), None, box, tuple(v // 7 for v in box))

    scenes = [
        Scene(0, Image.new("RGB", (112, 112)), [obj("red star", (0, 0, 28, 28)), obj("blue ring", (84, 84, 112, 112))]),
        Scene(1, Image.new("RGB", (112, 112)), [obj("pink moon", (35, 35, 77, 77))]),
    ]
    captions = [
        "a red star at the top left, and a blue ring in the middle.",  # right, wrong
        "a photo of a pink moon.",  # no location said
    ]
    out = location_word_accuracy(captions, scenes)
    assert out == {"objects_with_a_location": 2, "accuracy": 0.5, "modal_share": pytest.approx(1 / 3)}
    assert location_word_accuracy(["a red star."], scenes[:1])["accuracy"] is None


def test_object_name_recall_hand_case():
    captions = ["a striped red star, a blue ring", "a green circle"]
    objects = [["red star", "blue ring", "white cross"], ["green circle"]]
    assert object_name_recall(captions, objects) == pytest.approx(3 / 4)
    assert object_name_recall(["a red starfish"], [["red star"]]) == 0.0  # whole words only


def test_text_replay_adds_weighted_lm_loss(tmp_path):
    model, image_id = tiny_model()
    freeze_for_stage(model, "tfs", unfreeze_lm=True)
    tok = opt_tokenizer()
    replay = TextReplay(
        "opt", tok, ["a red star", "two blue rings on the left", "the green circle"], batch_size=2, seed=0
    )
    twin = TextReplay(
        "opt", tok, ["a red star", "two blue rings on the left", "the green circle"], batch_size=2, seed=0
    )
    expected_batch = twin.next_batch()
    assert expected_batch["input_ids"][0, 0].item() == 2  # OPT BOS </s> in front, EOS appended (toy LM pretraining)
    args = VPGTransTrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, unfreeze_lm=True, text_replay_weight=0.5
    )
    trainer = VPGTransTrainer(model=model, args=args, stage="tfs", replay=replay)
    model.eval()  # no dropout: the two computations must agree
    batch = _batch(model, image_id)
    with torch.no_grad():
        total = trainer.compute_loss(model, dict(batch))
        caption = model(**batch).loss
        text = model.language_model(**expected_batch).loss
    assert total.item() == pytest.approx(caption.item() + 0.5 * text.item(), rel=1e-5)


def _tiny_processor(image_id):
    from transformers import BlipImageProcessor

    from groundvlm.processing import VPGTransProcessor

    tok = opt_tokenizer()
    assert add_image_token(tok) == image_id
    return VPGTransProcessor(BlipImageProcessor(size={"height": 16, "width": 16}), tok, num_query_tokens=4)


def test_text_replay_behind_image_scores_text_after_unrelated_visual_prompts(tmp_path):
    model, image_id = tiny_model()
    freeze_for_stage(model, "tfs", unfreeze_lm=True)
    batch = _batch(model, image_id)
    processor = _tiny_processor(image_id)
    corpus = ["a red star", "In the image is a red star located at [14,28,70,112]", "the green circle"]
    replay = TextReplay("opt", processor.tokenizer, corpus, batch_size=3, seed=0, processor=processor)
    twin = TextReplay("opt", processor.tokenizer, corpus, batch_size=3, seed=0, processor=processor)
    expected = twin.next_batch()
    pick = twin.unrelated_images(batch["pixel_values"].shape[0], 3)
    assert (expected["input_ids"][:, : model.config.num_query_tokens] == image_id).all()
    args = VPGTransTrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        unfreeze_lm=True,
        text_replay_weight=0.5,
        text_replay_behind_image=True,
    )
    trainer = VPGTransTrainer(model=model, args=args, stage="tfs", replay=replay)
    model.eval()
    with torch.no_grad():
        total = trainer.compute_loss(model, dict(batch))
        caption = model(**batch).loss
        text = model(**expected, pixel_values=batch["pixel_values"][pick]).loss
    assert total.item() == pytest.approx(caption.item() + 0.5 * text.item(), rel=1e-5)


def test_lookup_replay_trains_the_answer_behind_an_image_prompt():
    """`lookup_fraction` of each replay batch are (prompt, answer) lookups: the prompt sits after the image tokens
    and is masked out of the labels, the answer is the target; the rest stays corpus text labelled whole. A lookup
    replay without an image prompt, or without lookups, is refused."""
    _, image_id = tiny_model()
    processor = _tiny_processor(image_id)
    corpus = ["a red star", "the green circle"]
    lookups = [("a red star on the left a blue ring on the left the blue ring", " on the left")]  # the toy vocab
    replay = TextReplay(
        "opt", processor.tokenizer, corpus, batch_size=4, seed=0, processor=processor, lookups=lookups,
        lookup_fraction=0.5,
    )  # fmt: skip
    batch = replay.next_batch()
    tok = processor.tokenizer
    assert (batch["input_ids"][:, : processor.num_query_tokens] == image_id).all()
    targets = [tok.decode([t for t in row.tolist() if t != -100], skip_special_tokens=True) for row in batch["labels"]]
    assert all(t.strip() in corpus for t in targets[:2])
    assert [t.strip() for t in targets[2:]] == ["on the left"] * 2  # the answer only, not the list before it
    assert "a blue ring on the left the blue ring" in tok.decode(batch["input_ids"][2], skip_special_tokens=True)
    with pytest.raises(ValueError, match="behind an image"):
        TextReplay("opt", tok, corpus, batch_size=4, lookups=lookups, lookup_fraction=0.5)
    with pytest.raises(ValueError, match="behind an image"):
        TextReplay("opt", tok, corpus, batch_size=4, processor=processor, lookup_fraction=0.5)
    with pytest.raises(RecipeError, match="text_replay_lookup_fraction"):
        VPGTransTrainingArguments(output_dir="x", report_to="none", text_replay_lookup_fraction=0.5)
    with pytest.raises(RecipeError, match="text_replay_lookup_listed"):  # distractors without any lookups
        VPGTransTrainingArguments(output_dir="x", report_to="none", text_replay_lookup_listed=6)


def test_caption_scores_report_one_cider_and_a_missing_meteor_without_java(monkeypatch):
    from groundvlm.recipes.systems.vpgtrans import evaluation

    preds = ["A red star, and a blue ring.", "a green circle"]
    refs = [["a red star and a blue ring", "red star blue ring"], ["a green circle", "the green circle"]]
    from groundvlm.recipes.common import caption_scores as scores_module

    monkeypatch.setattr(scores_module, "_java_available", lambda: False)
    without = evaluation.caption_scores(preds, refs)
    assert without["cider"] == evaluation.cider_d(preds, refs)
    assert without["meteor"] is None and without["missing_metrics"] == {"meteor": "needs Java (java on PATH)"}
    assert without["bleu_1"] is not None and without["rouge_l"] is not None


def test_cider_d_without_java_equals_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider

    from groundvlm.recipes.systems.vpgtrans.evaluation import cider_d

    preds = ["a red star and a blue ring", "a green circle", "two striped stars", "a white cross on a red square"]
    refs = [
        ["a red star and a blue ring", "a blue ring and a red star", "red star blue ring"],
        ["a green circle", "the green circle"],
        ["a striped star", "two stars"],
        ["a white cross", "a red square and a white cross"],
    ]
    expected, _ = Cider().compute_score(dict(enumerate(refs)), {i: [p] for i, p in enumerate(preds)})
    assert cider_d(preds, refs) == pytest.approx(expected, rel=1e-12)


def test_vqa_accuracy_fallback_without_evaluate(monkeypatch):
    import sys

    from groundvlm.recipes.systems.vpgtrans.evaluation import vqa_scores

    monkeypatch.setitem(sys.modules, "evaluate", None)  # import evaluate -> ImportError, as on a bare GPU machine
    # 10 human answers: "red" x2 -> each leave-one-out subset has 2 or 1 matches -> (8 * 2/3 + 2 * 1/3) / 10 = 0.6.
    answers = [["red", "Red"] + ["orange"] * 8, ["2"], ["yes"]]
    assert vqa_scores(["red.", "two", "the yes"], answers) == pytest.approx((0.6 + 1 + 1) / 3)


@pytest.mark.parametrize(
    "config", sorted(p.stem for p in (Path(__file__).parents[2] / "recipes" / "vpgtrans").glob("*.yaml"))
)
def test_every_shipped_config_parses(config, tmp_path):
    from groundvlm.recipes.common.arguments import parse_recipe_args

    run, script, _, _, training = parse_recipe_args(
        VPGTRANS_ARGUMENTS,
        ["--config", config, "--output_dir", str(tmp_path), "--bf16", "false", "--fp16", "false"],  # no GPU here
        recipe="vpgtrans",
    )
    assert script.stage in STAGES and run.preset in ("cpu", "gpu", "gpu-small")
    if script.stage == "stage1":
        assert training.num_train_epochs == 1 and training.warmup_steps == 0 and training.stage1_lr_multiplier == 5.0
    if config.startswith("paper_") and script.stage != "converter":
        assert training.learning_rate == 1e-4 and training.weight_decay == 0.05 and training.max_grad_norm == 0.0


def _toy_world_available():
    from groundvlm.recipes import toyworld as data

    return hasattr(data, "ToyWorld") and hasattr(data, "texts")


@pytest.mark.skipif(not _toy_world_available(), reason="toyworld.ToyWorld not available")
def test_toy_datasets_are_deterministic_per_index():
    from groundvlm.recipes.systems.vpgtrans.data import ToyCaptions, ToyVQA

    a, b = ToyCaptions(3, split="all", seed=5), ToyCaptions(3, split="all", seed=5)
    assert [a[i]["text"] for i in range(3)] == [b[i]["text"] for i in range(3)]
    assert a[0]["image"].mode == "RGB"
    ev = ToyCaptions(2, split="all", seed=5, references=3)[1]
    assert len(ev["references"]) == 3 and ev["image_id"] == "1"
    q = ToyVQA(2, split="all", seed=5)[0]
    assert q["question"] and len(q["answers"]) == 1


def test_toy_captions_located_fraction():
    """located_fraction=0 draws exactly the position-free captions; 1 names every object's location; out of range
    is refused."""
    from groundvlm.recipes.systems.vpgtrans.data import ToyCaptions

    plain, zero = ToyCaptions(4, split="all", seed=5), ToyCaptions(4, split="all", seed=5, located_fraction=0.0)
    assert [plain[i]["text"] for i in range(4)] == [zero[i]["text"] for i in range(4)]
    located = ToyCaptions(4, split="all", seed=5, located_fraction=1.0)
    from groundvlm.recipes.toyworld import location_phrase, region_caption

    for i in range(4):
        text = located[i]["text"]
        assert text == located[i]["text"]  # the same caption each time the example is drawn
        for obj in located.objects[i]:
            assert f"{region_caption(obj)} {location_phrase(obj, 112, 112)}" in text
    with pytest.raises(ValueError, match="located_fraction"):
        ToyCaptions(2, split="all", seed=5, located_fraction=1.5)


@pytest.mark.skipif(not _toy_world_available(), reason="toyworld.ToyWorld not available")
def test_toy_datasets_render_their_scenes_once(monkeypatch):
    """Scenes are rendered when the dataset is built; epochs read them back (the same pixels, no re-rendering)."""
    import numpy as np

    from groundvlm.recipes.systems.vpgtrans.data import ToyCaptions
    from groundvlm.recipes.toyworld import ToyWorld

    data = ToyCaptions(3, split="all", seed=5, offset=2)
    first = [np.asarray(data[i]["image"]) for i in range(3)]
    monkeypatch.setattr(ToyWorld, "scene", lambda self, index: pytest.fail("a scene was rendered again"))
    for _epoch in range(2):
        assert all(np.array_equal(np.asarray(data[i]["image"]), first[i]) for i in range(3))
    monkeypatch.undo()
    world = ToyWorld(seed=5, split="all")
    assert np.array_equal(first[1], np.asarray(world.scene(3).image.convert("RGB")))


def test_caption_asset_copies_the_committed_checkpoint(tmp_path, monkeypatch):
    import json as _json

    from groundvlm.recipes.toyworld import build, read_build_info, toy_asset

    committed = tmp_path / "committed"
    committed.mkdir()
    (committed / "config.json").write_text("{}")
    checks = {
        "held_out_images": {"name_recall": 0.9, "raw_box_parse_rate": 0.8},
        "held_out_categories": {"name_recall": 0.85},
    }
    (committed / "captioner.json").write_text(_json.dumps({"checks": checks, "meets_target": True}))
    monkeypatch.setattr(build, "COMMITTED_CAPTION_VLM", committed)
    with pytest.raises(FileNotFoundError, match="no SHA256SUMS"):
        toy_asset("vlm-caption", "cpu", cache_dir=tmp_path / "nosums", verbose=False)
    sums = "".join(f"{build._sha256(committed / f)}  {f}\n" for f in ("config.json", "captioner.json"))
    (committed / "SHA256SUMS").write_text(sums)
    folder = toy_asset(
        "vlm-caption",
        "cpu",
        cache_dir=tmp_path / "cache",
        verbose=False,
        builder=lambda *a: pytest.fail("must not train"),
    )
    assert read_build_info(folder)["metrics"] == {
        "source": "committed",
        "name_recall_held_out_images": 0.9,
        "name_recall_held_out_categories": 0.85,
        "raw_box_parse_rate": 0.8,
        "box_loss_ratio": None,
        "meets_target": True,
    }
    assert (folder / "config.json").is_file()
    # A committed file that does not match its SHA256SUMS (a corrupt checkout, an LFS pointer) is refused.
    (committed / "config.json").write_text('{"changed": 1}')
    with pytest.raises(RuntimeError, match="does not match"):
        toy_asset("vlm-caption", "cpu", cache_dir=tmp_path / "corrupt", verbose=False)
    with pytest.raises(FileNotFoundError, match="VPGTrans captioner builds it"):
        toy_asset("vlm-caption", "gpu", cache_dir=tmp_path / "cache", verbose=False)


def test_qformer_pretraining_uses_the_caption_stage_vit(tmp_path, monkeypatch):
    """--qformer_pretrain trains the Q-Former on the ViT the preset's caption stage uses (its config's vision_model)."""
    from groundvlm.recipes.systems.vpgtrans import captioner

    calls = []

    def fake_stage(args):
        calls.append(args)
        raise RuntimeError("stop after the Q-Former stage")

    monkeypatch.setattr(captioner, "_run_stage", fake_stage)
    for preset, vit in (("gpu-small", "toy:vision-blip2"), ("gpu-small-located", "toy:vision-blip2-pos")):
        with pytest.raises(RuntimeError, match="stop after"):
            captioner.build_caption_vlm(tmp_path / preset, preset, qformer_pretrain=True)
        args = calls[-1]
        assert args[args.index("--stage") + 1] == "qformer_pretrain"
        assert args[args.index("--vision_model") + 1] == vit


def test_bind_preset_binds_the_qformer_first_and_continues_from_it(tmp_path, monkeypatch):
    """Preset gpu-bind: the Q-Former of the init model (the config's, or --init_model) is trained to bind first,
    saved with its record, and the caption stage continues from that folder; a second build reuses it."""
    from groundvlm.recipes.systems.vpgtrans import binding, captioner

    model, image_id = tiny_model()
    init = tmp_path / "init"
    model.save_pretrained(init)
    _tiny_processor(image_id).save_pretrained(init)
    bound, calls = [], []
    monkeypatch.setattr(binding, "bind_qformer", lambda m, p, steps, seed=0: bound.append(steps) or [{"step": 1}])

    def fake_stage(args):
        calls.append(args)
        raise RuntimeError("stop after the binding step")

    monkeypatch.setattr(captioner, "_run_stage", fake_stage)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="stop after"):
            captioner.build_caption_vlm(tmp_path / "out", "gpu-bind", extra_args=["--init_model", str(init)])
    assert bound == [captioner.BIND_QFORMER_STEPS["gpu-bind"]]  # the second build reuses the bound Q-Former
    for args in calls:
        assert args[args.index("--config") + 1] == "captioner_bind_gpu"
        assert args[args.index("--stage") + 1] == "stage2"
        assert [a for a in args if a == "--init_model"] == ["--init_model"]
        assert args[args.index("--init_model") + 1] == str(tmp_path / "out" / "qformer_bound")
    record = json.loads((tmp_path / "out" / "qformer_bound" / "binding.json").read_text())
    assert record["init_model"] == str(init) and record["curve"] == [{"step": 1}]


def test_toy_captions_vqa_fraction():
    """vqa_fraction=0 draws exactly the captions; 1 turns every scene with a colour/shape question into one: the
    question (prompted by the collator) and, as its text, the attribute of the object it names; out of range is
    refused."""
    from groundvlm.recipes.systems.vpgtrans.data import ToyCaptions

    plain, zero = ToyCaptions(6, split="all", seed=5), ToyCaptions(6, split="all", seed=5, vqa_fraction=0.0)
    assert [plain[i]["text"] for i in range(6)] == [zero[i]["text"] for i in range(6)]
    assert all("question" not in plain[i] and "prompt" not in plain[i] for i in range(6))
    asked = ToyCaptions(6, split="all", seed=5, vqa_fraction=1.0)
    questions = 0
    for i in range(6):
        example = asked[i]
        assert example["text"] == asked[i]["text"]  # the same text each time the example is drawn
        if "question" not in example:
            continue
        questions += 1
        question, answer = example["question"], example["text"]
        objs = asked.objects[i]
        if question.startswith("What colour is the "):
            shape = question[len("What colour is the ") : -1]
            assert [o.colour for o in objs if o.shape == shape] == [answer]
        else:
            colour = question[len("What shape is the ") : -len(" object?")]
            assert [o.shape for o in objs if o.colour == colour] == [answer]
    assert questions >= 4
    with pytest.raises(ValueError, match="vqa_fraction"):
        ToyCaptions(2, split="all", seed=5, vqa_fraction=-0.1)


def test_the_word_converter_reads_captions_not_answers():
    """With `--toy_vqa_fraction` some training examples are questions whose text is a one-word answer: the converter's
    caption texts skip them."""
    from groundvlm.recipes.systems.vpgtrans.data import ToyCaptions, caption_texts

    mixed = ToyCaptions(8, split="all", seed=5, vqa_fraction=0.5)
    captions = caption_texts(mixed, 8)
    answers = [mixed[i]["text"] for i in range(8) if "question" in mixed[i]]
    assert answers and len(captions) == 8 - len(answers)
    assert all(len(c.split()) > 1 for c in captions)
    assert caption_texts(ToyCaptions(4, split="all", seed=5), 100) == [
        ToyCaptions(4, split="all", seed=5)[i]["text"] for i in range(4)
    ]


def test_caption_collator_masks_a_question_prompt_out_of_the_labels():
    """A question example trains on its answer only (the prompt's tokens are -100), a caption on the whole caption:
    a model trained on questions keeps writing captions when no question is asked."""
    from PIL import Image

    from groundvlm.recipes.systems.vpgtrans.data import CaptionCollator

    processor = _tiny_processor(tiny_model()[1])
    image = Image.new("RGB", (16, 16))
    examples = [
        {"image": image, "text": "a red star"},
        {"image": image, "question": "What colour is the star?", "text": "red"},
        {"image": image, "prompt": "Question: What colour is the star? Answer:", "text": "red"},
    ]
    batch = CaptionCollator(processor)(examples)
    newline = processor.tokenizer("\n", add_special_tokens=False)["input_ids"]
    caption_targets = [t for t in batch["labels"][0].tolist() if t != -100]
    answer_targets = [t for t in batch["labels"][1].tolist() if t != -100]
    assert processor.tokenizer.decode(caption_targets[1:]).strip() == "a red star"  # BOS, then the caption
    assert answer_targets == processor.tokenizer(" red", add_special_tokens=False)["input_ids"] + newline
    # a question is prompted as the reference's decoder-only VQA prompt: the same tokens as that prompt given whole
    assert batch["input_ids"][1].tolist() == batch["input_ids"][2].tolist()
    assert batch["labels"][1].tolist() == batch["labels"][2].tolist()


def test_caption_collator_prompts_a_question_in_the_llm_types_vqa_prompt():
    """OPT / LLaMA get "Question: {} Answer:", Flan-T5 "Question: {} Short answer:" (the reference's zero-shot VQA
    prompts); the answer is the target either way."""
    from groundvlm.processing.processing_vpgtrans import VPGTransProcessor
    from groundvlm.recipes.systems.vpgtrans.data import CaptionCollator

    class Recording:
        """The processor's VQA prompt choice; calling it returns what it was given."""

        vqa_prompt = VPGTransProcessor.vqa_prompt

        def __init__(self, is_encoder_decoder):
            self.is_encoder_decoder = is_encoder_decoder

        def __call__(self, **kwargs):
            return kwargs

    seen = {}
    for encoder_decoder in (False, True):
        batch = CaptionCollator(Recording(encoder_decoder))(
            [{"image": None, "question": "What colour is the star?", "text": "red"}]
        )
        seen[encoder_decoder] = (batch["text"], batch["text_target"])
    assert seen[False] == (["Question: What colour is the star? Answer:"], ["red"])
    assert seen[True] == (["Question: What colour is the star? Short answer:"], ["red"])


def test_binding_score_separates_binding_from_naming_an_attribute_of_the_scene():
    """The oracle scores 1; answering with another object's attribute of the same scene scores 0 and sits below
    `scene_chance`; an empty answer scores 0."""
    from groundvlm.recipes.systems.vpgtrans.captioner import binding_questions, score_binding

    rows = binding_questions(n_images=12, seed=3)
    assert rows and all(r["options"] >= 1 for r in rows)
    oracle = score_binding([r["answer"] + "." for r in rows], rows)
    assert oracle["accuracy"] == 1.0 and oracle["questions"] == len(rows)
    wrong = []
    for r in rows:
        others = [o for o in ("red", "blue", "star", "circle", "green", "square") if o != r["answer"]]
        wrong.append(others[0])
    assert score_binding(wrong, rows)["accuracy"] == 0.0
    assert 0.0 < oracle["scene_chance"] < 1.0
    assert score_binding([""] * len(rows), rows)["accuracy"] == 0.0
    with pytest.raises(ValueError, match="one answer per question"):
        score_binding(["red"], rows)


def test_base_gates_judge_binding_when_the_checks_have_it():
    """A base that names every attribute of the scene but binds none fails the binding gate; records made before the
    binding check keep their gates."""
    from groundvlm.recipes.systems.vpgtrans.captioner import BINDING_ACCURACY_MIN, base_gates

    images = {"name_recall": 0.9, "raw_box_parse_rate": 1.0}
    held_out = {"raw_miou": 0.27, "full_image_miou": 0.27, "raw_center_r": 0.0}
    checks = {"held_out_images": images, "held_out_categories": held_out, "box_loss": {"ratio": 1.0}}
    assert "binding_accuracy" not in base_gates(checks)
    unbound = base_gates({**checks, "binding": {"accuracy": 0.46, "scene_chance": 0.46}})
    assert unbound["binding_accuracy"]["passed"] is False and "0.460" in unbound["binding_accuracy"]["bound"]
    bound = base_gates({**checks, "binding": {"accuracy": BINDING_ACCURACY_MIN, "scene_chance": 0.46}})
    assert bound["binding_accuracy"]["passed"] is True


def test_toy_vqa_fraction_must_be_a_share():
    from groundvlm.recipes.systems.vpgtrans.arguments import VPGTransScriptArguments

    with pytest.raises(ValueError, match="toy_vqa_fraction"):
        VPGTransScriptArguments(toy_vqa_fraction=1.5)
