"""PIN evaluation: prompt every object, parse the box (reference parsing, fallback box), score mIoU / mIoU_M /
mIoU_L, write a Table-1-style comparison (markdown + json) and a PNG grid of predictions.

Protocol (PIN reference evaluation): one prompt per annotated object with its ground-truth name; images squashed to the model's
S×S; IoU against the ground truth in that squashed space (IoU itself does not change under the squash, the size
buckets do: they are COCO's 32²/96² scaled by S/224); unparseable output scores with the fallback box
[0, 0, S/16, S/16] and counts against `parse_ok`. Decoding: greedy (`num_beams=1`) or beam search (the
reference: 3 beams, 12 new tokens).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from groundvlm.recipes.common.run_dir import json_safe
from groundvlm.recipes.metrics import load_metric
from groundvlm.recipes.systems.pin.baselines import TABLE_NAMES, full_image_box, random_training_boxes


@dataclass
class EvalSample:
    """One prompt: `image` (RGB, any size), the object `name`, its ground-truth `box` in that image's pixels."""

    image: np.ndarray | Image.Image
    name: str
    box: list[float]
    image_id: int | str = 0

    @property
    def size_hw(self) -> tuple[int, int]:
        if isinstance(self.image, Image.Image):
            return self.image.height, self.image.width
        return int(self.image.shape[0]), int(self.image.shape[1])


def samples_from_pool(pool) -> list[EvalSample]:
    """Every object of every image of a `ScenePool` (the reference prompts every object at test time)."""
    return [
        EvalSample(image=pool.images[i], name=name, box=list(box), image_id=i)
        for i, objs in enumerate(pool.objects)
        for name, box in objs
    ]


REFERENCE_MAX_NEW_TOKENS = 12  # QUVA-Lab/PIN's evaluation setting


def check_max_new_tokens(processor, max_new_tokens: int | None) -> int:
    """`max_new_tokens`, or by default the reference's 12 raised to what the longest box takes with the processor's
    tokenizer; a budget that cannot hold a box is an error (every box would be cut and fail to parse)."""
    needed = processor.max_box_tokens()
    if max_new_tokens is None:
        return max(REFERENCE_MAX_NEW_TOKENS, needed)
    if max_new_tokens < needed:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} cannot hold a box: this tokenizer writes the longest one in {needed} "
            f"tokens; pass at least {needed} (or leave it unset)"
        )
    return max_new_tokens


@torch.no_grad()
def predict(
    model,
    processor,
    samples: list[EvalSample],
    batch_size: int = 32,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    use_pin: bool | None = None,
    progress: bool = False,
) -> list[dict]:
    """Generate and parse a box for every sample.

    Args:
        model: `PinForLocalization` (pass `use_pin`: True for PIN, False for the raw base) or a `PeftBaseline`.

        max_new_tokens: default the reference's 12, or the tokens the longest box takes with the base's tokenizer
            where that is more (`PinProcessor.max_box_tokens`); fewer than that is refused (a cut box never parses).

    Returns:
        Per sample `{"box": [x1, y1, x2, y2] on the sample's image, "parsed": bool, "text": str}`.
    """
    max_new_tokens = check_max_new_tokens(processor, max_new_tokens)
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) == "pin":
        processor.check_model_config(config)
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    kwargs = {} if use_pin is None else {"use_pin": use_pin}
    out = []
    starts = range(0, len(samples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="evaluating", leave=False)
    for start in starts:
        batch = samples[start : start + batch_size]
        inputs = processor(images=[s.image for s in batch], objects=[s.name for s in batch], padding_side="left")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        generated = model.generate(
            **inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False, **kwargs
        )
        results = processor.post_process_localization(
            generated.cpu(), target_sizes=[s.size_hw for s in batch], labels=[s.name for s in batch]
        )
        out += [{"box": r["boxes"][0].tolist(), "parsed": bool(r["parsed"]), "text": r["text"]} for r in results]
    return out


def constant_predictions(method: str, samples: list[EvalSample], train_boxes, image_size: int, seed: int) -> list[dict]:
    """The untrained box baselines: "random" (a training box, scaled from S×S to each image) or "full_image"."""
    if method == "full_image":
        boxes = [full_image_box(*s.size_hw) for s in samples]
    elif method == "random":
        picks = random_training_boxes(train_boxes, len(samples), seed)
        boxes = []
        for s, box in zip(samples, picks):
            h, w = s.size_hw
            boxes.append(
                [box[0] * w / image_size, box[1] * h / image_size, box[2] * w / image_size, box[3] * h / image_size]
            )
    else:
        raise ValueError(f"constant_predictions handles 'random' and 'full_image', got {method!r}")
    return [{"box": b, "parsed": True, "text": ""} for b in boxes]


def squash_box(box, size_hw: tuple[int, int], image_size: int) -> list[float]:
    """An xyxy pixel box on an image of `size_hw` (height, width) -> the S×S squashed image, clipped to it."""
    h, w = size_hw
    sx, sy = image_size / w, image_size / h
    clip = lambda v: min(max(float(v), 0.0), float(image_size))
    return [clip(box[0] * sx), clip(box[1] * sy), clip(box[2] * sx), clip(box[3] * sy)]


def score(predictions: list[dict], samples: list[EvalSample], image_size: int) -> dict:
    """box_miou over the samples, with both boxes squashed to S×S (PIN's protocol)."""
    if len(predictions) != len(samples):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples")
    metric = load_metric("box_miou")
    preds = [squash_box(p["box"], s.size_hw, image_size) for p, s in zip(predictions, samples)]
    refs = [squash_box(s.box, s.size_hw, image_size) for s in samples]
    result = metric.compute(
        predictions=preds, references=refs, image_size=image_size, parsed=[p["parsed"] for p in predictions]
    )
    result["center_corr"] = center_correlation(preds, refs)
    return result


def center_correlation(predictions: list[list[float]], references: list[list[float]]) -> float:
    """Mean over x and y of the Pearson correlation between predicted and true box centres.

    A diagnostic, not a paper metric: mIoU alone cannot tell a method that localises from one that writes the same
    well-placed prior box for every prompt (on the toy world the full-image box scores 0.29). A method that reads the
    object's position from the image has a clearly positive value; a constant or image-independent output gives ~0
    (NaN when the predictions do not vary at all in either axis).
    """
    p, r = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 2 or p.shape[1] != 4:
        raise ValueError(f"center_correlation needs two (N, 4) box arrays of one shape, got {p.shape} and {r.shape}")
    values = []
    for axis in (0, 1):
        pc, rc = (p[:, axis] + p[:, axis + 2]) / 2, (r[:, axis] + r[:, axis + 2]) / 2
        if len(pc) < 2 or pc.std() == 0 or rc.std() == 0:
            continue
        values.append(float(np.corrcoef(pc, rc)[0, 1]))
    return float(np.mean(values)) if values else float("nan")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def comparison_table(results: dict[str, dict], title: str = "") -> str:
    """A Table-1-style markdown table.

    Args:
        results: method -> {"held_out": box_miou result, "val": box_miou result (optional),
            "trainable_parameters": int (optional), "train_seconds": float (optional)}.
    """
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| method | mIoU | mIoU_M | mIoU_L | mIoU_S | parsed | centre r | val mIoU | trainable params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        h = r.get("held_out", {})
        v = r.get("val", {})
        lines.append(
            f"| {TABLE_NAMES.get(method, method)} | {_fmt(h.get('miou'))} | {_fmt(h.get('miou_m'))} | "
            f"{_fmt(h.get('miou_l'))} | {_fmt(h.get('miou_s'))} | {_fmt(h.get('parse_ok'))} | {_fmt(h.get('center_corr'))} | {_fmt(v.get('miou'))} | "
            f"{_fmt(r.get('trainable_parameters'))} |"
        )
    return "\n".join(lines) + "\n"


CONSTANT_BASELINES = ("full_image", "random")


def verdict(results: dict[str, dict], method: str = "pin") -> str | None:
    """One sentence: did `method` beat the best constant-box baseline on the held-out categories, and by how much
    (mIoU and centre correlation)? None when the run has no such comparison."""
    ours = results.get(method, {}).get("held_out", {}).get("miou")
    constants = {
        m: results[m]["held_out"]["miou"]
        for m in CONSTANT_BASELINES
        if results.get(m, {}).get("held_out", {}).get("miou") is not None
    }
    if ours is None or not constants:
        return None
    best = max(constants, key=constants.get)
    name, best_name = TABLE_NAMES.get(method, method), TABLE_NAMES.get(best, best)
    diff = ours - constants[best]
    r = results[method]["held_out"].get("center_corr")
    r_text = "n/a" if r is None or (isinstance(r, float) and math.isnan(r)) else f"{r:.2f}"
    if diff > 0.005:
        head = f"{name} beat the best constant baseline ({best_name}, {constants[best]:.3f}) by {diff:+.3f} mIoU"
    elif diff < -0.005:
        head = f"{name} did NOT beat the best constant baseline: {best_name} {constants[best]:.3f} vs {ours:.3f} ({diff:+.3f} mIoU)"
    else:
        head = f"{name} TIED the best constant baseline ({best_name}, {constants[best]:.3f} vs {ours:.3f}): no localisation gain"
    reads = "it reads object positions" if r_text != "n/a" and float(r_text) >= 0.3 else "it does not localise"
    return f"{head}; box-centre correlation {r_text} ({reads} — a constant box scores ~0)."


def write_comparison(run_dir: str | Path, results: dict[str, dict], title: str) -> tuple[Path, Path]:
    """`comparison.md` (table + verdict) and `comparison.json` (NaN written as null) in `run_dir`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    md, js = run_dir / "comparison.md", run_dir / "comparison.json"
    text = comparison_table(results, title)
    sentence = verdict(results)
    if sentence:
        text += f"\n**Verdict:** {sentence}\n"
    md.write_text(text, encoding="utf-8")
    js.write_text(json.dumps(json_safe(results), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    return md, js


def prediction_grid(
    samples: list[EvalSample], predictions: dict[str, list[dict]], path: str | Path, columns: int = 8, cell: int = 160
) -> Path:
    """A PNG: one row per method, one column per sample; ground truth in green, prediction in red (dashed-looking
    thin box when it did not parse), the object name and the method above each row."""
    methods = list(predictions)
    columns = min(columns, len(samples))
    if columns == 0 or not methods:
        raise ValueError("prediction_grid needs at least one sample and one method")
    header, legend = 14, 16
    canvas = Image.new("RGB", (columns * cell, legend + len(methods) * (cell + header)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([2, 3, 14, 13], outline=(0, 200, 0), width=2)
    draw.text((18, 2), "ground truth", fill=(0, 0, 0))
    draw.rectangle([110, 3, 122, 13], outline=(230, 0, 0), width=2)
    draw.text((126, 2), "prediction (thin: unparsed, fallback box)", fill=(0, 0, 0))
    for row, method in enumerate(methods):
        y0 = legend + row * (cell + header)
        draw.text((2, y0), TABLE_NAMES.get(method, method), fill=(0, 0, 0))
        for col in range(columns):
            sample, pred = samples[col], predictions[method][col]
            h, w = sample.size_hw
            image = sample.image if isinstance(sample.image, Image.Image) else Image.fromarray(sample.image)
            tile = image.convert("RGB").resize((cell, cell))
            tdraw = ImageDraw.Draw(tile)
            sx, sy = cell / w, cell / h
            scale = lambda b: [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
            tdraw.rectangle(scale(sample.box), outline=(0, 200, 0), width=2)
            tdraw.rectangle(scale(pred["box"]), outline=(230, 0, 0), width=2 if pred["parsed"] else 1)
            tdraw.text((2, cell - 12), sample.name[:24], fill=(255, 255, 255))
            canvas.paste(tile, (col * cell, y0 + header))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
