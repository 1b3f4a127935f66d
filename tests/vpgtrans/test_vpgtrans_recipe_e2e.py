"""VPGTrans recipe end to end through main() on tiny random models saved in the real formats and the
real-format data fixtures: tfs with per-epoch eval curve, converter -> stage1 chain, clear errors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    Blip2VisionConfig,
    Blip2VisionModel,
    BlipImageProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    OPTForCausalLM,
)

from groundvlm.modeling import VPGTransModel
from groundvlm.recipes import vpgtrans
from groundvlm.recipes.common import caption_scores as caption_scores_module
from tests._vpgtrans_toys import VISION, llama_tokenizer, opt_text_config, opt_tokenizer

COCO = Path(__file__).parents[1] / "fixtures" / "vpgtrans" / "coco"
DATA = [
    "--dataset",
    "coco",
    "--train_file",
    str(COCO / "coco_karpathy_train.json"),
    "--image_root",
    str(COCO),
    "--eval_caption_file",
    str(COCO / "coco_karpathy_val.json"),
    "--eval_vqa_questions",
    str(COCO / "vqa_val2014_questions.json"),
    "--eval_vqa_annotations",
    str(COCO / "vqa_val2014_annotations.json"),
    "--eval_vqa_image_root",
    str(COCO / "val2014"),
]
FAST = [
    "--per_device_train_batch_size",
    "2",
    "--caption_num_beams",
    "1",
    "--vqa_num_beams",
    "1",
    "--caption_min_length",
    "1",
    "--caption_max_length",
    "4",
    "--vqa_max_length",
    "3",
    "--use_cpu",
    "true",
    "--save_strategy",
    "no",
    "--no_resume",
    "--max_txt_len",
    "16",
    "--dataloader_num_workers",
    "0",
]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    tok = opt_tokenizer()
    for name, hidden in (("lm_small", 24), ("lm_large", 32)):
        OPTForCausalLM(opt_text_config(len(tok) + 1, hidden=hidden)).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    Blip2VisionModel(Blip2VisionConfig(**VISION)).save_pretrained(root / "vit")
    BlipImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root / "vit")
    ltok = llama_tokenizer()
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(ltok) + 1,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            bos_token_id=1,
            eos_token_id=2,
        )
    ).save_pretrained(root / "llama")
    ltok.save_pretrained(root / "llama")
    return root


@pytest.fixture(scope="module")
def tfs_run(bases, tmp_path_factory):
    out = tmp_path_factory.mktemp("tfs")
    # No METEOR (reported as None): two Java start-ups per evaluation would dominate this file's run time.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(caption_scores_module, "_java_available", lambda: False)
        _run_tfs(bases, out)
    return out


def _run_tfs(bases, out):
    vpgtrans.main(
        [
            "--stage",
            "tfs",
            "--vision_model",
            str(bases / "vit"),
            "--language_model",
            str(bases / "lm_small"),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--iters_per_inner_epoch",
            "1",
            "--num_query_tokens",
            "4",
            "--qformer_hidden_size",
            "32",
            "--qformer_heads",
            "4",
            *DATA,
            *FAST,
        ]
    )


def test_tfs_two_steps_writes_per_epoch_curve_and_model(tfs_run):
    metrics = json.loads((tfs_run / "metrics.json").read_text())
    curve = metrics["eval_curve"]
    assert curve["epoch"] == [1, 2] and curve["step"] == [1, 2]
    assert len(curve["cider"]) == 2 and len(curve["vqa_accuracy"]) == 2
    assert all(0.0 <= v <= 1.0 for v in curve["vqa_accuracy"])
    assert metrics["train"]["train_loss"] > 0
    model = VPGTransModel.from_pretrained(tfs_run / "model")
    assert model.config.num_query_tokens == 4 and model.generation_config.eos_token_id == 4  # "\n" in the toy vocab
    assert (tfs_run / "config.yaml").is_file() and (tfs_run / "model" / "processor_config.json").is_file()


def test_converter_then_stage1_trains_only_the_projector(bases, tfs_run, tmp_path):
    conv = tmp_path / "converter"
    target = vpgtrans.main(
        [
            "--stage",
            "converter",
            "--source_model",
            str(tfs_run / "model"),
            "--language_model",
            str(bases / "lm_large"),
            "--output_dir",
            str(conv),
            "--converter_epochs",
            "2",
            *DATA,
            *FAST,
        ]
    )
    assert target == conv / "model"
    info = json.loads((conv / "metrics.json").read_text())["converter"]
    assert info["same_tokenizer"] and info["paired_captions"] == 6
    w = load_file(str(conv / "converter.safetensors"))
    assert w["weight"].shape == (32, 24)
    before = VPGTransModel.from_pretrained(target)
    assert before.language_projection.out_features == 32

    s1 = tmp_path / "stage1"
    vpgtrans.main(
        [
            "--stage",
            "stage1",
            "--init_model",
            str(target),
            "--output_dir",
            str(s1),
            "--max_steps",
            "2",
            "--learning_rate",
            "1e-3",
            "--eval_each_epoch",
            "false",
            "--logging_steps",
            "1",
            *DATA,
            *FAST,
        ]
    )
    after = VPGTransModel.from_pretrained(s1 / "model")
    changed = {
        name.split(".")[0]
        for (name, a), b in zip(before.state_dict().items(), after.state_dict().values())
        if not torch.equal(a, b)
    }
    assert changed == {"language_projection"}
    assert "stage stage1: 2 trainable tensors" in (s1 / "train.log").read_text()


def test_eval_stage_writes_vqa_accuracy(tfs_run, tmp_path):
    vqa = DATA[:6] + DATA[8:]  # no caption file: VQA only
    vpgtrans.main(
        ["--stage", "eval", "--init_model", str(tfs_run / "model"), "--output_dir", str(tmp_path), *vqa, *FAST]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())["eval"]
    assert set(metrics) == {"vqa_accuracy", "sample_answer"} and 0.0 <= metrics["vqa_accuracy"] <= 1.0


def test_unknown_stage_and_missing_model_are_clear(tmp_path, bases):
    with pytest.raises(ValueError, match="--stage must be one of .*got 'stage3'"):
        vpgtrans.main(["--stage", "stage3", "--output_dir", str(tmp_path / "a"), *FAST])
    with pytest.raises(ValueError, match="--vision_model is required"):
        vpgtrans.main(
            [
                "--stage",
                "tfs",
                "--language_model",
                str(bases / "lm_small"),
                "--output_dir",
                str(tmp_path / "b"),
                *DATA,
                *FAST,
            ]
        )


def test_converter_without_pairable_captions_is_refused(tmp_path, bases, tfs_run):
    # "striped" is one OPT token but two LLaMA pieces, so no caption has equal lengths under both tokenizers.
    captions = tmp_path / "train.json"
    captions.write_text(
        json.dumps([{"image": "val2014/COCO_val2014_000000000001.jpg", "caption": "striped striped", "image_id": "1"}])
    )
    with pytest.raises(ValueError, match="no word pairs"):
        vpgtrans.main(
            [
                "--stage",
                "converter",
                "--source_model",
                str(tfs_run / "model"),
                "--language_model",
                str(bases / "llama"),
                "--output_dir",
                str(tmp_path / "c"),
                "--dataset",
                "coco",
                "--train_file",
                str(captions),
                "--image_root",
                str(COCO),
                *FAST,
            ]
        )
