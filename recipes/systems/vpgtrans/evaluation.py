"""VPGTrans zero-shot evaluation (LAVIS caption / VQA tasks): COCO-style captioning scored by CIDEr, VQA scored by VQA accuracy.

- Captioning: empty prompt, beam 5, 8 to 30 new tokens (LAVIS `min_len 8`, `max_len 30`).
- VQA: prompt "Question: {} Answer:" (OPT / LLaMA) or "Question: {} Short answer:" (Flan-T5), beam 5, 1 to 10
  new tokens, `length_penalty -1` (which favours short answers under beam search); the answer is the generated
  text after the prompt, cut at "\\n" and stripped.

`evaluate_vl_llm` runs both and returns `{"cider": ..., "vqa_accuracy": ...}` (plus the other caption scores),
which the recipe logs after every (inner) epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from groundvlm.recipes.common.caption_scores import _words, caption_scores, cider_d  # noqa: F401 (re-exported)
from groundvlm.recipes.systems.vpgtrans.arguments import VPGTransEvalArguments

logger = logging.getLogger("groundvlm")


@dataclass
class GenerationSettings:
    """Decoding settings of the reference evaluation configs (LAVIS caption_coco / vqav2 eval yamls)."""

    caption_num_beams: int = 5
    caption_min_length: int = 8
    caption_max_length: int = 30
    vqa_num_beams: int = 5
    vqa_min_length: int = 1
    vqa_max_length: int = 10
    vqa_length_penalty: float = -1.0
    batch_size: int = 16


def _batches(dataset, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_captions(model, processor, dataset, settings: GenerationSettings | None = None) -> list[str]:
    """Captions for every example of `dataset` (dicts with "image"), empty prompt, as the reference."""
    settings = settings or GenerationSettings()
    was_training = model.training
    model.eval()
    out = []
    for batch in _batches(dataset, settings.batch_size):
        inputs = processor(images=[e["image"] for e in batch], text=[""] * len(batch)).to(_device(model))
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        ids = model.generate(
            **inputs,
            num_beams=settings.caption_num_beams,
            min_new_tokens=settings.caption_min_length,
            max_new_tokens=settings.caption_max_length,
            do_sample=False,
        )
        out.extend(processor.post_process_generation(ids, inputs["input_ids"]))
    model.train(was_training)
    return out


@torch.no_grad()
def generate_answers(model, processor, dataset, settings: GenerationSettings | None = None) -> list[str]:
    """Answers for every example of `dataset` (dicts with "image", "question") with the reference VQA prompt."""
    settings = settings or GenerationSettings()
    was_training = model.training
    model.eval()
    out = []
    for batch in _batches(dataset, settings.batch_size):
        prompts = [processor.vqa_prompt(e["question"]) for e in batch]
        inputs = processor(images=[e["image"] for e in batch], text=prompts).to(_device(model))
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        ids = model.generate(
            **inputs,
            num_beams=settings.vqa_num_beams,
            min_new_tokens=settings.vqa_min_length,
            max_new_tokens=settings.vqa_max_length,
            length_penalty=settings.vqa_length_penalty,
            do_sample=False,
        )
        out.extend(processor.post_process_generation(ids, inputs["input_ids"]))
    model.train(was_training)
    return out


def load_metric(name: str):
    # Imported here: `evaluate` (and `datasets`) load only when a metric module is used.
    from groundvlm.recipes.metrics import load_metric as _load

    return _load(name)


def _simple_answer(text: str) -> str:
    words = [w for w in _words(text) if w not in ("a", "an", "the")]
    return " ".join(_NUMBERS.get(w, w) for w in words)


_NUMBERS = {
    w: str(i)
    for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))
}


def vqa_scores(predictions: list[str], answers: list[list[str]], normalize_references: bool = True) -> float:
    """VQA accuracy (min(#humans that said it / 3, 1), averaged as the official evaluation). Without `evaluate`
    (a bare GPU machine) a simplified normalisation is used (lower case, punctuation and articles removed,
    number words as digits) with the same min(#matches / 3, 1) averaged over leave-one-out subsets."""
    try:
        import evaluate  # noqa: F401
    except ImportError:
        scores = []
        for pred, refs in zip(predictions, answers):
            pred, refs = _simple_answer(pred), [_simple_answer(a) for a in refs]
            if len(refs) == 1:
                scores.append(float(pred == refs[0]))
                continue
            subsets = [refs[:i] + refs[i + 1 :] for i in range(len(refs))]
            scores.append(sum(min(1.0, sum(a == pred for a in sub) / 3) for sub in subsets) / len(subsets))
        return sum(scores) / len(scores)
    result = load_metric("vqa_accuracy").compute(
        predictions=predictions, references=answers, normalize_references=normalize_references
    )
    return result["accuracy"]


def evaluate_vl_llm(
    model,
    processor,
    caption_data=None,
    vqa_data=None,
    settings: GenerationSettings | None = None,
    normalize_references: bool = True,
) -> dict:
    """Zero-shot caption CIDEr on `caption_data` (examples with "references") and VQA accuracy on `vqa_data`
    (examples with "answers"); either may be None. Returns a flat dict of floats, plus one sample caption."""
    metrics: dict = {}
    if caption_data is not None and len(caption_data):
        captions = generate_captions(model, processor, caption_data, settings)
        refs = [caption_data[i]["references"] for i in range(len(caption_data))]
        metrics.update(caption_scores(captions, refs))
        metrics["sample_caption"] = captions[0]
    if vqa_data is not None and len(vqa_data):
        answers = generate_answers(model, processor, vqa_data, settings)
        gold = [vqa_data[i]["answers"] for i in range(len(vqa_data))]
        metrics["vqa_accuracy"] = float(vqa_scores(answers, gold, normalize_references))
        metrics["sample_answer"] = answers[0]
    return metrics


__all__ = [
    "GenerationSettings",
    "caption_scores",
    "cider_d",
    "evaluate_vl_llm",
    "generate_answers",
    "generate_captions",
    "vqa_scores",
]


def generation_settings(args: VPGTransEvalArguments) -> GenerationSettings:
    return GenerationSettings(
        caption_num_beams=args.caption_num_beams,
        caption_min_length=args.caption_min_length,
        caption_max_length=args.caption_max_length,
        vqa_num_beams=args.vqa_num_beams,
        vqa_max_length=args.vqa_max_length,
        vqa_length_penalty=args.vqa_length_penalty,
        batch_size=args.eval_batch_size,
    )
