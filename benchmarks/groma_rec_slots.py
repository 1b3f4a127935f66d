"""Which region slot a trained Groma answers with on REC, against the slot that holds the target.

REC asks the LLM to point at one of the regions it was shown (`<roi><r_k></roi>`); the regions are in descending
proposer score. If the predicted slots cluster at the top while the target's slot is spread, the LLM answers from
position, not from the region features. For each REC query of the toy evaluation scenes this counts: the slot the
answer names, the slot of the shown region with the best IoU with the target (when one has IoU > 0.5), and the hits
per predicted slot.

    python benchmarks/groma_rec_slots.py runs/groma/toy_cpu/instruct/final [--scenes 100] [--out slots.json]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from torchvision.ops import box_iou

from groundvlm.recipes.systems.groma import data, evaluation, models
from groundvlm.recipes.toyworld import ToyWorld


def slot_counts(parsed: list[dict], samples: list[dict], iou: float = 0.5) -> dict:
    predicted, target, hits = collections.Counter(), collections.Counter(), collections.Counter()
    for p, s in zip(parsed, samples):
        regions = p["regions"]
        if not len(regions):
            continue
        overlap = box_iou(regions, torch.tensor([s["gt_boxes"][0]], dtype=torch.float32))[:, 0]
        if overlap.max() > iou:
            target[int(overlap.argmax())] += 1
        box = evaluation.first_box(p)
        if box is not None:
            k = int(box_iou(torch.tensor([box], dtype=torch.float32), regions)[0].argmax())
            predicted[k] += 1
            hits[k] += int(overlap[k] > iou)
    as_list = lambda c: [[k, c[k]] for k in sorted(c)]  # noqa: E731
    return {"predicted_slot": as_list(predicted), "target_slot": as_list(target), "hits_by_predicted_slot": as_list(hits),
            "queries": len(samples)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a Groma checkpoint folder (model + processor), e.g. <run>/instruct/final")
    parser.add_argument("--scenes", type=int, default=100, help="toy evaluation scenes (the recipe's toy_eval_scenes)")
    parser.add_argument("--scene_seed", type=int, default=0, help="the recipe's scene_seed (eval uses seed + 1)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model, processor = models.load_groma(args.model)
    model.to(args.device).eval()
    samples = data.toy_eval_sets(ToyWorld(args.scene_seed + 1, split="train"), args.scenes)["rec"]
    parsed = evaluation.generate(model, processor, samples, evaluation.MAX_NEW_TOKENS["rec"], args.batch_size)
    result = {"model": str(args.model), **slot_counts(parsed, samples)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
