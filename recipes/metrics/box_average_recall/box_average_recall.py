"""Box average recall over IoU thresholds and sizes: the LVIS-Ground protocol of Groma (Ma et al., ECCV 2024).

Each sample is one (image, category) query: the model lists boxes for that category and every listed box becomes
a detection with score 1.0 (a generative model has no scores, so AP would be meaningless and only recall is
reported). Scoring is pycocotools' COCOeval (iouType "bbox", per category, `maxDets=[max_dets]`), the same
matching and recall definition as the LVISEval subclass in Groma's `eval_lvis.py`:
- detections are matched greedily in the order given (all scores are equal and the sort is stable), at most
  `max_dets` per sample;
- recall per category = matched ground truths / ground truths of that category, then averaged over categories
  that have ground truth in the area range (macro average, as COCO / LVIS do);
- AR averages over IoU thresholds 0.50:0.05:0.95; AR50 / AR75 at one threshold; ARs / ARm / ARl restrict to
  ground truth of area [0, 32^2], [32^2, 96^2], [96^2, inf) (COCO's ranges, both ends inclusive).
LVIS scores sizes by the instance-mask area; from boxes alone the area is w*h unless `reference_areas` is given.
"""

import contextlib
import io
import math

import datasets
import evaluate
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

_CITATION = """\
@inproceedings{ma2024groma,
  title     = {Groma: Localized Visual Tokenization for Grounding Multimodal Large Language Models},
  author    = {Ma, Chuofan and Jiang, Yi and Wu, Jiannan and Yuan, Zehuan and Qi, Xiaojuan},
  booktitle = {ECCV},
  year      = {2024}
}
@inproceedings{gupta2019lvis,
  title     = {LVIS: A Dataset for Large Vocabulary Instance Segmentation},
  author    = {Gupta, Agrim and Dollar, Piotr and Girshick, Ross},
  booktitle = {CVPR},
  year      = {2019}
}
"""

_DESCRIPTION = """\
Average recall of unscored predicted boxes against ground-truth boxes (LVIS-Ground protocol): AR over IoU
0.50:0.95 with max_dets detections per query, AR50, AR75 and AR for small / medium / large ground truth,
computed by pycocotools' COCOeval.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `list` of 4 `float`): per query, the predicted xyxy pixel boxes in the order
        the model produced them (may be empty).
    references (`list` of `list` of `list` of 4 `float`): per query, the ground-truth xyxy pixel boxes of the
        queried category in that image (may be empty; x1 < x2, y1 < y2).
    category_ids (`list` of `int`, optional): the queried category of each sample. Recall is averaged per
        category, so this changes the result when categories hold different numbers of boxes. Default: all
        samples share one category (a micro average over all ground-truth boxes).
    max_dets (`int`, default 300): detections kept per query (Groma uses LVIS's 300).
    reference_areas (`list` of `list` of `float`, optional): per ground-truth box, the area used for the size
        buckets (e.g. LVIS mask areas). Default: box w*h.
Returns:
    ar (`float`): recall averaged over IoU 0.50:0.05:0.95 and categories (Groma's "AR@300").
    ar50, ar75 (`float`): recall at IoU 0.50 / 0.75.
    ar_s, ar_m, ar_l (`float`): AR restricted to small / medium / large ground truth; NaN when no category has
        ground truth of that size.
    num_queries (`int`), num_gt (`int`), num_predictions (`int`, after the max_dets cut).
Examples:
    >>> metric = evaluate.load("recipes/metrics/box_average_recall")
    >>> metric.compute(predictions=[[[0, 0, 10, 10]]], references=[[[0, 0, 10, 10], [50, 50, 90, 90]]])["ar"]
    0.5
"""

_SUMMARIES = {
    # output key: (IoU threshold or None for the 0.50:0.95 mean, COCOeval area-range label)
    "ar": (None, "all"),
    "ar50": (0.5, "all"),
    "ar75": (0.75, "all"),
    "ar_s": (None, "small"),
    "ar_m": (None, "medium"),
    "ar_l": (None, "large"),
}


def _xyxy_to_xywh(box, where: str, positive_area: bool) -> list:
    if box is None or len(box) != 4:
        raise ValueError(f"{where} must be one xyxy box of 4 numbers, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"{where} has a non-finite coordinate: {box!r}")
    if positive_area and (x2 <= x1 or y2 <= y1):
        raise ValueError(f"{where} = {box!r} is degenerate: a ground-truth xyxy box needs x1 < x2 and y1 < y2")
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{where} = {box!r} is not an xyxy box (x1 > x2 or y1 > y2)")
    return [x1, y1, x2 - x1, y2 - y1]


def _coco_from(images: list, categories: list, annotations: list) -> COCO:
    """An in-memory pycocotools COCO object (COCO() + createIndex, quietly: pycocotools prints progress)."""
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BoxAverageRecall(evaluate.Metric):
    def _info(self):
        boxes = datasets.Sequence(datasets.Sequence(datasets.Value("float64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": boxes, "references": boxes}),
            reference_urls=["https://github.com/FoundationVision/Groma", "https://github.com/lvis-dataset/lvis-api"],
        )

    def _compute(self, predictions, references, category_ids=None, max_dets=300, reference_areas=None):
        num_queries = len(references)
        if num_queries == 0:
            raise ValueError("box_average_recall needs at least one query, got none")
        if category_ids is None:
            category_ids = [1] * num_queries
        if len(category_ids) != num_queries:
            raise ValueError(f"category_ids has {len(category_ids)} entries but there are {num_queries} queries")
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in category_ids):
            raise ValueError(f"category_ids must be integers, got {list(category_ids)[:5]!r}...")
        if not (isinstance(max_dets, (int, np.integer)) and max_dets >= 1):
            raise ValueError(f"max_dets must be a positive integer, got {max_dets!r}")
        if reference_areas is not None and len(reference_areas) != num_queries:
            raise ValueError(f"reference_areas has {len(reference_areas)} entries but there are {num_queries} queries")

        # One COCO image per query: COCOeval scores (image, category) pairs, so this equals LVIS-Ground's
        # per-(image, category) evaluation even when several queries share a real image.
        images = [{"id": i + 1} for i in range(num_queries)]
        categories = [{"id": int(c)} for c in sorted(set(category_ids))]
        gt_anns, dt_anns = [], []
        for i, (preds, refs, cat) in enumerate(zip(predictions, references, category_ids)):
            refs = refs or []
            if reference_areas is not None and len(reference_areas[i] or []) != len(refs):
                raise ValueError(f"reference_areas[{i}] needs one area per ground-truth box ({len(refs)})")
            for j, box in enumerate(refs):
                xywh = _xyxy_to_xywh(box, f"references[{i}][{j}]", positive_area=True)
                area = xywh[2] * xywh[3] if reference_areas is None else float(reference_areas[i][j])
                gt_anns.append(
                    {
                        "id": len(gt_anns) + 1,
                        "image_id": i + 1,
                        "category_id": int(cat),
                        "bbox": xywh,
                        "area": area,
                        "iscrowd": 0,
                    }
                )
            for j, box in enumerate(preds or []):
                xywh = _xyxy_to_xywh(box, f"predictions[{i}][{j}]", positive_area=False)
                # Groma turns every generated box into a detection with score 1.0.
                dt_anns.append(
                    {
                        "id": len(dt_anns) + 1,
                        "image_id": i + 1,
                        "category_id": int(cat),
                        "bbox": xywh,
                        "area": xywh[2] * xywh[3],
                        "score": 1.0,
                        "iscrowd": 0,
                    }
                )

        coco_gt = _coco_from(images, categories, gt_anns)
        # Built directly rather than with COCO.loadRes, which fails on an empty result list.
        coco_dt = _coco_from(images, categories, dt_anns)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [int(max_dets)]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()

        # recall: [T iou thresholds, K categories, A area ranges, M maxDets]; -1 marks "no ground truth".
        recall = evaluator.eval["recall"]
        iou_thresholds = evaluator.params.iouThrs
        area_labels = evaluator.params.areaRngLbl
        result = {}
        for key, (iou_threshold, area_label) in _SUMMARIES.items():
            values = recall[:, :, area_labels.index(area_label), 0]
            if iou_threshold is not None:
                values = values[np.isclose(iou_thresholds, iou_threshold)]
            values = values[values > -1]
            result[key] = float(values.mean()) if values.size else math.nan
        kept = sum(min(len(preds or []), int(max_dets)) for preds in predictions)
        result.update(num_queries=num_queries, num_gt=len(gt_anns), num_predictions=kept)
        return result
