"""Evaluation metrics as `evaluate` modules, one folder each, loadable offline by path.

    from groundvlm.recipes.metrics import load_metric
    miou = load_metric("box_miou")          # same as evaluate.load("<this folder>/box_miou")

| name                 | protocol                                   | inputs (per sample)                          |
|----------------------|--------------------------------------------|----------------------------------------------|
| `box_miou`           | PIN: mIoU, small/medium/large buckets      | pred xyxy box, GT xyxy box                   |
| `rec_accuracy`       | REC accuracy@IoU, mean IoU, missing rate   | pred xyxy box or None, GT xyxy box           |
| `box_average_recall` | Groma LVIS-Ground: AR, AR50/75, ARs/m/l    | list of pred boxes, list of GT boxes         |
| `caption_metrics`    | COCO caption: BLEU, METEOR, ROUGE-L, CIDEr | caption str, list of reference str           |
| `vqa_accuracy`       | VQAv2 / OK-VQA / GQA accuracy              | answer str, list of human answers (or one)   |

Each folder's `<name>.py` documents its inputs, keyword arguments and outputs (`metric.inputs_description`).
"""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("box_miou", "rec_accuracy", "box_average_recall", "caption_metrics", "vqa_accuracy")


def metric_path(name: str) -> str:
    """The folder of metric `name` inside the installed package (what `evaluate.load` takes)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(METRIC_NAMES)}")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` of one of our metrics by its folder path (works offline); kwargs go to `evaluate.load`
    (e.g. `experiment_id`, `num_process`/`process_id` for distributed evaluation)."""
    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRIC_NAMES", "load_metric", "metric_path"]
