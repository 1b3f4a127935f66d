"""Box mIoU with small/medium/large buckets: the PIN localisation protocol (Dorkenwald et al., CVPR 2024).

One predicted box and one ground-truth box per sample, both xyxy in pixels of an `image_size`-square image
(PIN squashes every evaluation image to 224x224 and scales the boxes with it). The per-sample IoU is the
diagonal of `torchvision.ops.box_iou(pred, gt)`; mIoU is its mean over all samples. PIN's reference averages per
batch and Lightning then averages those batch means; the mean over all samples is the quantity both estimate
(identical whenever batches are equal-sized).

Size buckets are by ground-truth box area, with the COCO thresholds scaled by s = image_size / 224:
small: area < (32 s)^2, medium: (32 s)^2 <= area < (96 s)^2, large: area >= (96 s)^2.
"""

import math

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{dorkenwald2024pin,
  title     = {PIN: Positional Insert Unlocks Object Localisation Abilities in VLMs},
  author    = {Dorkenwald, Michael and Barazani, Nimrod and Snoek, Cees G. M. and Asano, Yuki M.},
  booktitle = {CVPR},
  year      = {2024}
}
"""

_DESCRIPTION = """\
Box mIoU (PIN protocol): the mean IoU between one predicted and one ground-truth xyxy pixel box per sample,
overall and in COCO-style small / medium / large buckets of ground-truth area (thresholds 32^2 and 96^2 px,
scaled by image_size / 224). Optionally the fraction of samples whose model output parsed into a box.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of 4 `float`): predicted boxes, one per sample, xyxy in pixels
        (x1 <= x2, y1 <= y2; a zero-area box is allowed and scores IoU 0).
    references (`list` of `list` of 4 `float`): ground-truth boxes, one per sample, xyxy in pixels with
        x1 < x2 and y1 < y2.
    image_size (`float`, default 224): side of the square image the boxes live in; scales the bucket
        thresholds by image_size / 224.
    parsed (`list` of `bool`, optional): per sample, whether the model's text parsed into a box (PIN falls back
        to the cell box [0, 0, 14, 14] when it does not; pass the fallback box as the prediction). When given,
        `parse_ok` is reported. Pass it to `compute()` for all samples at once.
Returns:
    miou (`float`): mean IoU over all samples.
    miou_s, miou_m, miou_l (`float`): mean IoU over the samples in each ground-truth size bucket;
        NaN when the bucket is empty.
    count, count_s, count_m, count_l (`int`): number of samples overall and per bucket.
    parse_ok (`float`, only with `parsed`): fraction of samples that parsed.
Examples:
    >>> metric = evaluate.load("recipes/metrics/box_miou")
    >>> metric.compute(predictions=[[0, 0, 10, 10]], references=[[0, 0, 10, 20]])["miou"]
    0.5
"""

# COCO's small/medium area thresholds in 224-px space (PIN scales them by image_size / 224).
_COCO_SMALL_SIDE = 32.0
_COCO_MEDIUM_SIDE = 96.0


def _as_boxes(boxes, name: str) -> np.ndarray:
    """Validate a list of xyxy boxes -> float64 array [N, 4]; ValueError naming the first bad sample."""
    for i, box in enumerate(boxes):
        if box is None or len(box) != 4:
            raise ValueError(f"{name}[{i}] must be one xyxy box of 4 numbers, got {box!r}")
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] has a non-finite coordinate: {boxes[bad[0]]!r}")
    return array


def pairwise_box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of boxes1[i] with boxes2[i] (the diagonal of torchvision.ops.box_iou), same formula.

    boxes1, boxes2: [N, 4] xyxy. Returns [N]. Assumes every union is > 0 (callers validate the ground truth).
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    width = np.clip(np.minimum(boxes1[:, 2], boxes2[:, 2]) - np.maximum(boxes1[:, 0], boxes2[:, 0]), 0, None)
    height = np.clip(np.minimum(boxes1[:, 3], boxes2[:, 3]) - np.maximum(boxes1[:, 1], boxes2[:, 1]), 0, None)
    inter = width * height
    return inter / (area1 + area2 - inter)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BoxMiou(evaluate.Metric):
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
            reference_urls=["https://github.com/QUVA-Lab/PIN"],
        )

    def _compute(self, predictions, references, image_size=224, parsed=None):
        if len(predictions) == 0:
            raise ValueError("box_miou needs at least one sample, got none")
        if not (isinstance(image_size, (int, float)) and image_size > 0):
            raise ValueError(f"image_size must be a positive number, got {image_size!r}")
        pred = _as_boxes(predictions, "predictions")
        gt = _as_boxes(references, "references")
        bad_gt = np.flatnonzero((gt[:, 2] <= gt[:, 0]) | (gt[:, 3] <= gt[:, 1]))
        if bad_gt.size:
            raise ValueError(
                f"references[{bad_gt[0]}] = {references[bad_gt[0]]!r} is degenerate: a ground-truth xyxy box needs "
                "x1 < x2 and y1 < y2"
            )
        bad_pred = np.flatnonzero((pred[:, 2] < pred[:, 0]) | (pred[:, 3] < pred[:, 1]))
        if bad_pred.size:
            raise ValueError(
                f"predictions[{bad_pred[0]}] = {predictions[bad_pred[0]]!r} is not an xyxy box (x1 > x2 or y1 > y2)"
            )

        iou = pairwise_box_iou(pred, gt)
        scale = float(image_size) / 224.0
        area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        small = area < (_COCO_SMALL_SIDE * scale) ** 2
        large = area >= (_COCO_MEDIUM_SIDE * scale) ** 2
        medium = ~small & ~large

        buckets = {"s": small, "m": medium, "l": large}
        result = {"miou": float(iou.mean())}
        for suffix, mask in buckets.items():
            # An empty bucket has no mean; NaN keeps every value a float (json writes it as NaN).
            result[f"miou_{suffix}"] = float(iou[mask].mean()) if mask.any() else math.nan
        result["count"] = int(iou.size)
        for suffix, mask in buckets.items():
            result[f"count_{suffix}"] = int(mask.sum())
        if parsed is not None:
            if len(parsed) != len(predictions):
                raise ValueError(f"parsed has {len(parsed)} flags but there are {len(predictions)} samples")
            result["parse_ok"] = float(np.mean([bool(flag) for flag in parsed]))
        return result
