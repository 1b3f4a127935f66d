"""VPGTrans's stages ("VPG" = ViT + Q-Former + query tokens):

| stage              | starts from                                     | trains                                         |
|--------------------|-------------------------------------------------|------------------------------------------------|
| `converter`        | source VL-LLM + target LLM                      | word converter (Linear, 1-cos, SGD 5.0); saves it and the target VL-LLM with the merged projector (`<out>/model`) |
| `qformer_pretrain` | a ViT                                           | Q-Former with ITC + ITM + ITG (BLIP-2 stage 1) |
| `stage1`           | `<converter out>/model`                         | projector only, 5x lr constant, 1 epoch, no warm-up |
| `stage2`           | `<stage1 out>/model`                            | Q-Former, query tokens, ViT post-LN (`ln_vision`), projector; cosine per inner epoch |
| `tfs`              | ViT + LLM (+ optionally a pretrained Q-Former)  | as stage2, Q-Former and projector new          |
| `inherit`          | source VL-LLM + target LLM                      | as stage2, VPG inherited, projector random      |
| `eval`             | `--init_model`                                  | nothing: caption CIDEr + VQA accuracy           |

`run_stage` runs one of them into a run directory; the trained model and its processor go to `<run_dir>/model`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, Blip2VisionModel, set_seed

from groundvlm.modeling import VPGTransModel
from groundvlm.modeling.vpgtrans_transfer import (
    build_target_model,
    input_word_embeddings,
    pair_caption_tokens,
    train_word_converter,
)
from groundvlm.processing import VPGTransProcessor
from groundvlm.recipes.common.arguments import RunArguments
from groundvlm.recipes.common.checkpointing import save_pretrained_once, save_safetensors_atomic, train_resuming
from groundvlm.recipes.common.run_dir import prepare_run_dir, write_metrics
from groundvlm.recipes.systems.vpgtrans.arguments import (
    VPGTransEvalArguments,
    VPGTransModelArguments,
    VPGTransScriptArguments,
    VPGTransTrainingArguments,
    check_stage,
)
from groundvlm.recipes.systems.vpgtrans.data import CaptionCollator, caption_texts, eval_data, train_data
from groundvlm.recipes.systems.vpgtrans.evaluation import evaluate_vl_llm, generation_settings
from groundvlm.recipes.systems.vpgtrans.models import (
    build_stage_model,
    freeze_for_stage,
    load_language_model,
    make_processor,
    qformer_config,
    resolve_path,
)
from groundvlm.recipes.systems.vpgtrans.qformer import QFORMER_WEIGHTS_NAME, QFormerPretrainer
from groundvlm.recipes.systems.vpgtrans.training import EpochEvalCallback, VPGTransTrainer, toy_replay

logger = logging.getLogger("groundvlm")

MODEL_DIR = "model"
CONVERTER_NAME = "converter.safetensors"


def run_converter(
    script_args: VPGTransScriptArguments,
    model_args: VPGTransModelArguments,
    training_args: VPGTransTrainingArguments,
    run_dir: Path,
    preset: str,
) -> Path:
    """Train the word converter on caption text; save it and the target VL-LLM with the merged projector."""
    source_path = resolve_path(model_args.source_model, preset, "source_model")
    lm_path = resolve_path(model_args.language_model, preset, "language_model")
    source = VPGTransModel.from_pretrained(source_path)
    source_tokenizer = AutoTokenizer.from_pretrained(source_path)
    target_lm, target_tokenizer = load_language_model(lm_path)
    data = train_data(script_args, training_args.seed, render_workers=training_args.dataloader_num_workers)
    captions = caption_texts(data, training_args.converter_captions)
    pairs = pair_caption_tokens(captions, source_tokenizer, target_tokenizer)
    losses = []
    converter = train_word_converter(
        input_word_embeddings(source.language_model),
        input_word_embeddings(target_lm),
        pairs,
        epochs=training_args.converter_epochs,
        lr=training_args.converter_lr,
        captions_per_batch=training_args.converter_captions_per_batch,
        seed=training_args.seed,
        on_step=lambda e, s, loss: losses.append(loss),
    )
    save_safetensors_atomic(
        {"weight": converter.weight.detach(), "bias": converter.bias.detach()}, run_dir / CONVERTER_NAME
    )
    target = build_target_model(source, target_lm, target_tokenizer, converter)
    source_processor = VPGTransProcessor.from_pretrained(source_path)
    processor = make_processor(source_processor.image_processor, target_tokenizer, target, model_args.max_txt_len)
    save_pretrained_once(run_dir / MODEL_DIR, target, processor)
    write_metrics(
        run_dir,
        "converter",
        {
            "captions": pairs.num_captions,
            "paired_captions": len(pairs.pairs),
            "paired_tokens": pairs.num_tokens,
            "same_tokenizer": pairs.same_tokenizer,
            "first_loss": losses[0],
            "final_loss": losses[-1],
        },
    )
    return run_dir / MODEL_DIR


class _PretrainCollator:
    def __init__(self, image_processor, tokenizer, max_len: int):
        self.image_processor, self.tokenizer, self.max_len = image_processor, tokenizer, max_len

    def __call__(self, examples):
        text = self.tokenizer(
            [e["text"] for e in examples],
            padding="longest",
            truncation=True,
            max_length=self.max_len,
            return_tensors="pt",
        )
        pixels = self.image_processor([e["image"] for e in examples], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}


def run_qformer_pretrain(
    script_args: VPGTransScriptArguments,
    model_args: VPGTransModelArguments,
    training_args: VPGTransTrainingArguments,
    run_args: RunArguments,
    run_dir: Path,
) -> Path:
    """BLIP-2 stage 1 (ITC + ITM + ITG) on captions; saves `qformer_pretrained.safetensors`."""
    vision_path = resolve_path(model_args.vision_model, run_args.preset, "vision_model")
    lm_path = resolve_path(model_args.language_model, run_args.preset, "language_model")
    tokenizer = AutoTokenizer.from_pretrained(lm_path)  # the Q-Former reads text with the LLM's tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vision = Blip2VisionModel.from_pretrained(vision_path)
    config = qformer_config(model_args, vision.config.hidden_size, text_input=True, vocab_size=len(tokenizer))
    model = QFormerPretrainer(vision, config, model_args.num_query_tokens)
    collator = _PretrainCollator(AutoImageProcessor.from_pretrained(vision_path), tokenizer, model_args.max_txt_len)
    trainer = VPGTransTrainer(
        model=model,
        args=training_args,
        train_dataset=train_data(script_args, training_args.seed, render_workers=training_args.dataloader_num_workers),
        data_collator=collator,
        stage=script_args.stage,
    )
    result = train_resuming(trainer, resume=run_args.resume, max_minutes=run_args.max_train_minutes)
    path = save_safetensors_atomic(model.vpgtrans_state_dict(), run_dir / QFORMER_WEIGHTS_NAME)
    write_metrics(run_dir, "train", result.metrics)
    return path


def run_training(
    script_args: VPGTransScriptArguments,
    model_args: VPGTransModelArguments,
    eval_args: VPGTransEvalArguments,
    training_args: VPGTransTrainingArguments,
    run_args: RunArguments,
    run_dir: Path,
):
    """A training stage (stage1, stage2, tfs, inherit) or `eval`; returns (model, processor, metrics)."""
    stage = script_args.stage
    model, processor = build_stage_model(stage, model_args, run_args.preset)
    caption_eval, vqa_eval = eval_data(script_args, training_args.seed)
    settings = generation_settings(eval_args)
    toy = script_args.dataset == "toy"
    if stage == "eval":
        metrics = evaluate_vl_llm(model, processor, caption_eval, vqa_eval, settings, toy)
        write_metrics(run_dir, "eval", metrics)
        return model, processor, metrics
    if stage == "stage1" and training_args.num_train_epochs != 1:
        logger.warning(
            "Stage 1 is 1 epoch in the reference; running %s epochs as asked.", training_args.num_train_epochs
        )
    names = freeze_for_stage(model, stage, training_args.unfreeze_lm)
    logger.info(
        "stage %s: %d trainable tensors (%d parameters)",
        stage,
        len(names),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    replay = None
    if training_args.text_replay_weight > 0:
        if not training_args.unfreeze_lm:
            raise ValueError("--text_replay_weight keeps an unfrozen LLM's language; it needs --unfreeze_lm.")
        replay = toy_replay(training_args, processor, run_args.preset, training_args.seed)
    trainer = VPGTransTrainer(
        model=model,
        args=training_args,
        train_dataset=train_data(script_args, training_args.seed, render_workers=training_args.dataloader_num_workers),
        data_collator=CaptionCollator(processor),
        stage=stage,
        replay=replay,
    )
    if eval_args.eval_each_epoch:
        callback = EpochEvalCallback(trainer, processor, caption_eval, vqa_eval, settings, run_dir, script_args.dataset)
        trainer.add_callback(callback)
    result = train_resuming(trainer, resume=run_args.resume, max_minutes=run_args.max_train_minutes)
    save_pretrained_once(run_dir / MODEL_DIR, model, processor)
    write_metrics(run_dir, "train", result.metrics)
    return model, processor, result.metrics


def run_stage(
    run_args: RunArguments,
    script_args: VPGTransScriptArguments,
    model_args: VPGTransModelArguments,
    eval_args: VPGTransEvalArguments,
    training_args: VPGTransTrainingArguments,
    run_dir: Path,
):
    """Run `script_args.stage` into `run_dir`: the converter returns the target model folder, `qformer_pretrain`
    the Q-Former weights file, the others (model, processor, metrics)."""
    check_stage(script_args, training_args)
    # Every stage's new parameters (converter, random projector of `inherit`, Q-Former heads) come from the seed:
    # torch's default generator starts from a random seed per process, and the Trainer seeds only after the model
    # exists.
    set_seed(training_args.seed)
    if script_args.stage == "converter":
        return run_converter(script_args, model_args, training_args, run_dir, run_args.preset)
    if script_args.stage == "qformer_pretrain":
        return run_qformer_pretrain(script_args, model_args, training_args, run_args, run_dir)
    return run_training(script_args, model_args, eval_args, training_args, run_args, run_dir)


def run_vpgtrans(
    run_args: RunArguments,
    script_args: VPGTransScriptArguments,
    model_args: VPGTransModelArguments,
    eval_args: VPGTransEvalArguments,
    training_args: VPGTransTrainingArguments,
):
    """The recipe on parsed arguments: check the stage, take the run directory `training_args.output_dir` (arguments
    recorded, lock held), run the stage there and log its summary. Returns what `run_stage` returns."""
    check_stage(script_args, training_args)
    run_dir = prepare_run_dir(training_args.output_dir, run_args, script_args, model_args, eval_args, training_args)
    result = run_stage(run_args, script_args, model_args, eval_args, training_args, run_dir)
    summary = result[-1] if isinstance(result, tuple) else result  # the metrics, or the written folder / file
    logger.info("Stage %s finished: %s", script_args.stage, summary)  # train.log keeps it with the run
    return result
