"""Accuracy@IoU for referring expression comprehension (RefCOCO / RefCOCO+ / RefCOCOg style).

One ground-truth box per referring expression and at most one predicted box (the model's first box; Groma's
`eval_rec.py` keeps only the first predicted region). A sample is correct when IoU(pred, gt) > iou_threshold
(strictly greater, as Groma's script; `strict=False` gives >=). A missing prediction (None or an empty list:
the model named no box) counts as wrong and as IoU 0 in the mean, and is reported as `missing_rate`.
Groma reports acc@0.5; PIN reports RefCOCO as P@0.3.
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{ma2024groma,
  title     = {Groma: Localized Visual Tokenization for Grounding Multimodal Large Language Models},
  author    = {Ma, Chuofan and Jiang, Yi and Wu, Jiannan and Yuan, Zehuan and Qi, Xiaojuan},
  booktitle = {ECCV},
  year      = {2024}
}
@inproceedings{kazemzadeh2014referitgame,
  title     = {ReferItGame: Referring to Objects in Photographs of Natural Scenes},
  author    = {Kazemzadeh, Sahar and Ordonez, Vicente and Matten, Mark and Berg, Tamara},
  booktitle = {EMNLP},
  year      = {2014}
}
"""

_DESCRIPTION = """\
Referring expression comprehension accuracy: the fraction of expressions whose predicted box has IoU above a
threshold with the ground-truth box (default 0.5), plus the mean IoU and the fraction of missing predictions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of (`list` of 4 `float` or `None`)): one predicted xyxy box per expression, or None / []
        when the model produced no box.
    references (`list` of `list` of 4 `float`): one ground-truth xyxy box per expression (x1 < x2, y1 < y2).
        Any pixel scale works as long as prediction and reference share it (IoU is scale-invariant).
    iou_threshold (`float`, default 0.5): the IoU a prediction must exceed.
    strict (`bool`, default True): correct means IoU > iou_threshold (Groma); False means IoU >= iou_threshold.
Returns:
    accuracy (`float`): fraction of expressions answered correctly (missing ones are wrong).
    miou (`float`): mean IoU over all expressions, a missing prediction counting as 0.
    missing_rate (`float`): fraction of expressions without a predicted box.
    count (`int`): number of expressions.
Examples:
    >>> metric = evaluate.load("recipes/metrics/rec_accuracy")
    >>> metric.compute(predictions=[[0, 0, 10, 10], None], references=[[0, 0, 10, 10], [0, 0, 5, 5]])
    {'accuracy': 0.5, 'miou': 0.5, 'missing_rate': 0.5, 'count': 2}
"""


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two xyxy boxes [4] (torchvision.ops.box_iou's formula); gt has positive area."""
    width = max(0.0, min(pred[2], gt[2]) - max(pred[0], gt[0]))
    height = max(0.0, min(pred[3], gt[3]) - max(pred[1], gt[1]))
    inter = width * height
    union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    return float(inter / union)


def _check_box(box, where: str, positive_area: bool) -> np.ndarray:
    if len(box) != 4:
        raise ValueError(f"{where} must be one xyxy box of 4 numbers, got {box!r}")
    array = np.asarray(box, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{where} has a non-finite coordinate: {box!r}")
    width, height = array[2] - array[0], array[3] - array[1]
    # A ground-truth box needs a positive area (else IoU is undefined); a zero-area prediction just scores 0.
    if positive_area and (width <= 0 or height <= 0):
        raise ValueError(f"{where} = {box!r} is degenerate: a ground-truth xyxy box needs x1 < x2 and y1 < y2")
    if width < 0 or height < 0:
        raise ValueError(f"{where} = {box!r} is not an xyxy box (x1 > x2 or y1 > y2)")
    return array


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
            reference_urls=["https://github.com/FoundationVision/Groma"],
        )

    def _compute(self, predictions, references, iou_threshold=0.5, strict=True):
        if len(references) == 0:
            raise ValueError("rec_accuracy needs at least one sample, got none")
        if not (isinstance(iou_threshold, (int, float)) and 0.0 <= iou_threshold <= 1.0):
            raise ValueError(f"iou_threshold must be a number in [0, 1], got {iou_threshold!r}")
        ious, correct, missing = [], [], []
        for i, (pred, ref) in enumerate(zip(predictions, references)):
            if ref is None:
                raise ValueError(f"references[{i}] is missing: every expression needs its ground-truth box")
            gt = _check_box(ref, f"references[{i}]", positive_area=True)
            if pred is None or len(pred) == 0:
                ious.append(0.0)
                correct.append(False)
                missing.append(True)
                continue
            iou = _iou(_check_box(pred, f"predictions[{i}]", positive_area=False), gt)
            ious.append(iou)
            correct.append(iou > iou_threshold if strict else iou >= iou_threshold)
            missing.append(False)
        return {
            "accuracy": float(np.mean(correct)),
            "miou": float(np.mean(ious)),
            "missing_rate": float(np.mean(missing)),
            "count": len(ious),
        }
