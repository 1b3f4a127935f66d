"""Groma's evaluations through the `evaluate` modules of recipes/metrics/, batched, greedy and deterministic.

- REC (FoundationVision/groma groma/eval/eval_rec.py): "Locate <p>expr</p> in the image.", greedy; only the first
  predicted region counts; accuracy = IoU > 0.5 (`rec_accuracy`), plus mean IoU and the missing rate.
- Proposer recall (groma/eval/run_ddetr.py): the top-k proposals by objectness against all boxes of the image,
  `box_average_recall` with max_dets = k: AR over IoU 0.5:0.95 and recall at IoU 0.5.
- Grounded captions: phrase -> box F1@0.5 (a predicted phrase is correct when its text names a ground-truth phrase
  and one of its boxes has IoU >= 0.5 with that phrase's box) and AR@100 of all grounded boxes (pycocotools).
- LVIS-Ground style AR (groma/eval/eval_lvis.py): every predicted box of "Locate all <p>cat</p>" with score 1.
- Region captions (groma/eval/model_vg.py + eval_cap.py): greedy captions of user boxes; special tokens dropped;
  `caption_scores` (CIDEr-D without Java; BLEU, ROUGE-L, METEOR (Java) from pycocoevalcap on the same tokens).
"""

from __future__ import annotations

import logging

import torch
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from groundvlm.processing.processing_groma import build_groma_prompt
from groundvlm.recipes.common.caption_scores import caption_scores
from groundvlm.recipes.metrics import load_metric

logger = logging.getLogger("groundvlm")

MAX_NEW_TOKENS = {"rec": 4, "lvis": 24, "grounded_caption": 48, "region_caption": 24}


def length_sorted_order(prompts: list[str], tokenizer) -> list[int]:
    """Sample indices sorted by prompt length in tokens, longest first (stable): a batch then holds prompts of
    similar length, so little of it is left padding, and an out-of-memory batch shows up first."""
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return sorted(range(len(prompts)), key=lambda i: -lengths[i])


@torch.no_grad()
def generate(
    model,
    processor,
    samples: list[dict],
    max_new_tokens: int,
    batch_size: int = 32,
    desc: str = "",
    sort_by_length: bool = True,
    cache_implementation: str | None = None,
) -> list:
    """Greedy answers for chat samples (their last user turn is the query): `post_process_grounding` dicts with the
    pixel boxes of the original images, in sample order, each with `regions`: the pixel boxes of all the regions
    the model was shown (row j is `<r_j>`). Batches are formed over the samples sorted by prompt length
    (`sort_by_length`); greedy answers do not depend on the batching (tests/groma/test_groma_batched_bf16.py).
    `cache_implementation`: passed to `generate` (None: the model's generation_config)."""
    model.eval()
    device = next(model.parameters()).device
    all_prompts = [build_groma_prompt(s["messages"], add_generation_prompt=True) for s in samples]
    order = length_sorted_order(all_prompts, processor.tokenizer) if sort_by_length else list(range(len(samples)))
    results = [None] * len(samples)
    for start in tqdm(range(0, len(samples), batch_size), desc=desc or "generate", unit="batch"):
        where = order[start : start + batch_size]
        chunk = [samples[i] for i in where]
        prompts = [all_prompts[i] for i in where]
        refer = [s["refer_boxes"] for s in chunk]
        inputs = processor(images=[s["image"] for s in chunk], text=prompts, refer_boxes=refer if any(refer) else None)
        sizes = inputs.pop("image_sizes")
        if "refer_boxes" in inputs:
            inputs["refer_boxes"] = [b.to(device) for b in inputs["refer_boxes"]]
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        kwargs = {"cache_implementation": cache_implementation} if cache_implementation else {}
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True, **kwargs
        )
        answers = out.sequences[:, inputs["input_ids"].shape[1] :]
        parsed = processor.post_process_grounding(
            answers, [b.cpu() for b in out.region_boxes], sizes, skip_prompt=False
        )
        for i, answer, regions, (h, w) in zip(where, parsed, out.region_boxes, sizes.tolist()):
            answer["regions"] = regions.float().cpu() * torch.tensor([w, h, w, h], dtype=torch.float32)
            results[i] = answer
    return results


def first_box(parsed: dict):
    """The first predicted region of an answer (REC keeps only that one), or None."""
    if len(parsed["boxes"]):
        return parsed["boxes"][0].tolist()
    for _, boxes in parsed["phrases"]:
        if len(boxes):
            return boxes[0].tolist()
    return None


def region_bounds(parsed: list[dict], targets: list[list[float]], iou: float = 0.5) -> dict:
    """What the regions allow, whatever the LLM answers: the oracle accuracy (some region the model was shown has
    IoU > `iou` with the target: the ceiling the proposer sets) and the chance accuracy (a uniformly random region
    hits), averaged over samples; with the number of regions shown."""
    oracle = chance = shown = 0.0
    for p, target in zip(parsed, targets):
        regions = p["regions"]
        shown += len(regions)
        if len(regions):
            hits = box_iou(regions, torch.tensor([target], dtype=torch.float32))[:, 0] > iou
            oracle += float(hits.any())
            chance += float(hits.float().mean())
    n = max(len(parsed), 1)
    return {"oracle": oracle / n, "chance": chance / n, "regions_shown": shown / n}


def evaluate_rec(model, processor, samples, batch_size: int = 32) -> dict:
    """REC accuracy@0.5 and mIoU of the first predicted region, with the oracle and chance accuracies of the regions
    shown (`region_bounds`): REC acc near chance means the LLM does not read the regions; near the oracle, the
    proposer is the limit."""
    parsed = generate(model, processor, samples, MAX_NEW_TOKENS["rec"], batch_size, desc="REC")
    targets = [s["gt_boxes"][0] for s in samples]
    result = load_metric("rec_accuracy").compute(predictions=[first_box(p) for p in parsed], references=targets)
    bounds = region_bounds(parsed, targets)
    return {"rec_acc@0.5": result["accuracy"], "rec_miou": result["miou"], "rec_missing_rate": result["missing_rate"],
            "rec_count": result["count"], "rec_oracle_acc@0.5": bounds["oracle"],
            "rec_chance_acc@0.5": bounds["chance"], "rec_regions_shown": bounds["regions_shown"]}  # fmt: skip


@torch.no_grad()
def evaluate_proposer(model, processor, samples, k: int = 100, batch_size: int = 32) -> dict:
    """Recall of the proposer's top-k boxes (k is capped by the number of queries)."""
    model.eval()
    device = next(model.parameters()).device
    predictions = []
    for start in tqdm(range(0, len(samples), batch_size), desc="proposer recall", unit="batch"):
        chunk = samples[start : start + batch_size]
        pixel_values = processor.image_processor([s["image"] for s in chunk], return_tensors="pt")["pixel_values"]
        _, boxes, scores, _ = model.perceive(pixel_values.to(device), region_maps=False)
        for s, b, sc in zip(chunk, boxes, scores):
            order = sc.argsort(descending=True, stable=True)[:k]
            w, h = s["image"].size
            cx, cy, bw, bh = b[order].float().cpu().unbind(-1)
            xyxy = torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), -1) * torch.tensor([w, h, w, h])
            predictions.append(xyxy.tolist())
    result = load_metric("box_average_recall").compute(
        predictions=predictions, references=[s["boxes"] for s in samples], max_dets=k
    )
    return {f"proposer_ar@{k}": result["ar"], f"proposer_recall@{k}": result["ar50"]}


def _phrase_key(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


def phrase_box_f1(parsed: list[dict], samples: list[dict], iou: float = 0.5) -> dict:
    """Phrase -> box F1: precision over predicted phrases with boxes, recall over ground-truth phrases."""
    true_pos = num_pred = num_gt = 0
    for p, s in zip(parsed, samples):
        gt = {_phrase_key(text): torch.tensor(boxes, dtype=torch.float32) for text, boxes in s["phrases"]}
        num_gt += len(gt)
        matched = set()
        for text, boxes in p["phrases"]:
            if not len(boxes):
                continue
            num_pred += 1
            key = _phrase_key(text)
            if key in gt and key not in matched and (box_iou(boxes.float(), gt[key]) >= iou).any():
                matched.add(key)
                true_pos += 1
    precision = true_pos / num_pred if num_pred else 0.0
    recall = true_pos / num_gt if num_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"phrase_box_precision@0.5": precision, "phrase_box_recall@0.5": recall, "phrase_box_f1@0.5": f1}


def evaluate_grounded_captions(model, processor, samples, batch_size: int = 32) -> dict:
    parsed = generate(
        model, processor, samples, MAX_NEW_TOKENS["grounded_caption"], batch_size, desc="grounded captions"
    )
    result = phrase_box_f1(parsed, samples)
    predictions = [[b.tolist() for _, boxes in p["phrases"] for b in boxes] + p["boxes"].tolist() for p in parsed]
    ar = load_metric("box_average_recall").compute(predictions=predictions, references=[s["gt_boxes"] for s in samples],
                                                   max_dets=100)  # fmt: skip
    result.update({"grounding_ar@100": ar["ar"], "grounding_ar50@100": ar["ar50"], "parse_failures": sum(
        not p["parsed"] for p in parsed)})  # fmt: skip
    return result


def evaluate_lvis_ground(model, processor, samples, batch_size: int = 32) -> dict:
    parsed = generate(model, processor, samples, MAX_NEW_TOKENS["lvis"], batch_size, desc="LVIS-Ground")
    predictions = [[b.tolist() for _, boxes in p["phrases"] for b in boxes] + p["boxes"].tolist() for p in parsed]
    ar = load_metric("box_average_recall").compute(
        predictions=predictions, references=[s["gt_boxes"] for s in samples],
        category_ids=[s.get("category_id", 0) for s in samples], max_dets=300,
    )  # fmt: skip
    return {"lvis_ar@300": ar["ar"], "lvis_ar50": ar["ar50"], "lvis_ar75": ar["ar75"]}


def evaluate_region_captions(model, processor, samples, batch_size: int = 32) -> dict:
    """Greedy region captions scored by `caption_scores` (CIDEr-D without Java; METEOR None where Java is missing)."""
    parsed = generate(model, processor, samples, MAX_NEW_TOKENS["region_caption"], batch_size, desc="region captions")
    captions = [p["text"] or "." for p in parsed]
    scores = caption_scores(captions, [s["reference"] for s in samples])
    return {f"region_caption_{k.lower()}": v for k, v in scores.items()}
