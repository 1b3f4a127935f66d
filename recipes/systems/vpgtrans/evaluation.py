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
import math
import re
import shutil
from collections import Counter
from dataclasses import dataclass

import torch

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


def _java_available() -> bool:
    """METEOR (pycocoevalcap's Meteor 1.5 jar) runs Java."""
    return shutil.which("java") is not None


def _words(text: str) -> list[str]:
    # Stand-in for the PTB tokenizer on already-normalised captions: lower case, punctuation removed.
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def _ngrams(words: list[str], n_max: int = 4) -> Counter:
    return Counter(tuple(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1))


def cider_d(predictions: list[str], references: list[list[str]], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015, as COCO's evaluation computes it) without Java: n-grams n = 1..4 weighted by
    TF-IDF with document frequencies over the references of this set, candidate counts clipped to the
    reference's, a Gaussian penalty exp(-(l_c - l_r)^2 / (2 sigma^2)) on the length difference (lengths counted in
    bigrams, as the COCO code), cosine per n averaged over n and over references, x10, averaged over images."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError("cider_d needs one non-empty reference list per prediction.")
    refs = [[_ngrams(_words(r)) for r in rs] for rs in references]
    cands = [_ngrams(_words(p)) for p in predictions]
    df = Counter(g for rs in refs for g in set().union(*[set(r) for r in rs]))
    log_n = math.log(float(len(refs)))

    def vec(counts):
        v, norm, length = [{} for _ in range(4)], [0.0] * 4, 0
        for g, tf in counts.items():
            n = len(g) - 1
            v[n][g] = tf * (log_n - math.log(max(1.0, df[g])))
            norm[n] += v[n][g] ** 2
            length += tf if n == 1 else 0
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for cand, rs in zip(cands, refs):
        vc, nc, lc = vec(cand)
        total = 0.0
        for r in rs:
            vr, nr, lr = vec(r)
            penalty = math.exp(-((lc - lr) ** 2) / (2 * sigma**2))
            per_n = []
            for n in range(4):
                val = sum(min(w, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, w in vc[n].items())
                if nc[n] != 0 and nr[n] != 0:
                    val /= nc[n] * nr[n]
                per_n.append(val * penalty)
            total += sum(per_n) / 4
        scores.append(10.0 * total / len(rs))
    return sum(scores) / len(scores)


def caption_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """COCO caption scores, all on one tokenisation (lower case, punctuation removed), whatever is installed.

    `cider`: CIDEr-D by `cider_d` (x10 scale, e.g. 1.2 for "120"), the score VPGTrans reports, computed the same way
    on every machine (equal to pycocoevalcap's `Cider` on the same tokens). `bleu_1`..`bleu_4`, `rouge_l`:
    pycocoevalcap's scorers; `meteor`: pycocoevalcap's METEOR 1.5, which runs Java. A score whose scorer cannot run
    here is None, and `missing_metrics` names it and says what it needs; no score stands in for another.
    """
    scores: dict = {"cider": cider_d(predictions, references)}
    missing: dict[str, str] = {}
    gts = {i: [" ".join(_words(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(_words(p))] for i, p in enumerate(predictions)}
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l"):
            scores[name], missing[name] = None, "needs pycocoevalcap"
    else:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"bleu_{n + 1}": float(v) for n, v in enumerate(bleu)})
        scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        if _java_available():
            scores["meteor"] = float(Meteor().compute_score(gts, res)[0])
        else:
            scores["meteor"], missing["meteor"] = None, "needs Java (java on PATH)"
    if missing:
        scores["missing_metrics"] = missing
        logger.warning("caption scores not computed here: %s", ", ".join(f"{k} ({v})" for k, v in missing.items()))
    return scores


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
