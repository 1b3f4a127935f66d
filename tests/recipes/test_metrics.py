"""Metrics under recipes/metrics (evaluate modules loaded by folder path, offline), against hand-computed values.

The Java-backed caption metrics are in test_metrics_caption.py.
"""

import math
import sys
import types
from pathlib import Path

import evaluate
import pytest
import torch
from torchvision.ops import box_iou

from groundvlm.recipes.metrics import METRIC_NAMES, load_metric, metric_path

METRICS_DIR = Path(__file__).resolve().parents[2] / "recipes" / "metrics"


@pytest.fixture(scope="module")
def box_miou():
    return evaluate.load(str(METRICS_DIR / "box_miou"))


@pytest.fixture(scope="module")
def rec_accuracy():
    return evaluate.load(str(METRICS_DIR / "rec_accuracy"))


@pytest.fixture(scope="module")
def box_ar():
    return evaluate.load(str(METRICS_DIR / "box_average_recall"))


@pytest.fixture(scope="module")
def vqa():
    return evaluate.load(str(METRICS_DIR / "vqa_accuracy"))


# ----------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_every_metric_loads_offline_by_folder_path(name):
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest made this session offline
    folder = METRICS_DIR / name
    assert (folder / f"{name}.py").is_file()
    module = evaluate.load(str(folder))
    assert isinstance(module, evaluate.EvaluationModule)
    assert module.name == name
    assert module.description.strip() and module.citation.strip() and "Returns" in module.inputs_description


def test_load_metric_resolves_the_installed_folder():
    assert Path(metric_path("box_miou")) == METRICS_DIR / "box_miou"
    module = load_metric("rec_accuracy")
    assert module.compute(predictions=[[0, 0, 10, 10]], references=[[0, 0, 10, 10]])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown metric 'miou'.*box_miou"):
        load_metric("miou")


# ----------------------------------------------------------------------------------------------- box_miou


def test_box_miou_iou_one_seventh(box_miou):
    # pred [0,0,2,2] and gt [1,1,3,3]: intersection 1x1 = 1, union 4 + 4 - 1 = 7 -> IoU 1/7.
    out = box_miou.compute(predictions=[[0, 0, 2, 2]], references=[[1, 1, 3, 3]])
    assert out["miou"] == pytest.approx(1 / 7)
    assert out["count"] == 1 and out["count_s"] == 1


def test_box_miou_buckets_hand_computed(box_miou):
    # small: gt 10x10 (area 100 < 32^2), pred its top half -> IoU 50/100 = 0.5
    # medium: gt 50x50 (32^2 <= 2500 < 96^2), pred identical -> IoU 1
    # large: gt 100x100 (10000 >= 96^2 = 9216), pred shifted by 50 -> inter 5000, union 15000 -> IoU 1/3
    out = box_miou.compute(
        predictions=[[0, 0, 10, 5], [0, 0, 50, 50], [50, 0, 150, 100]],
        references=[[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 100, 100]],
    )
    assert out["miou_s"] == pytest.approx(0.5)
    assert out["miou_m"] == pytest.approx(1.0)
    assert out["miou_l"] == pytest.approx(1 / 3)
    assert out["miou"] == pytest.approx((0.5 + 1 + 1 / 3) / 3)  # = 11/18
    assert (out["count"], out["count_s"], out["count_m"], out["count_l"]) == (3, 1, 1, 1)


@pytest.mark.parametrize(
    "image_size, side_w, side_h, bucket",
    [
        # s = image_size / 224; small < (32 s)^2 <= medium < (96 s)^2 <= large
        (224, 32, 32, "m"),  # area exactly 32^2 is medium
        (224, 32, 31.99, "s"),
        (224, 96, 96, "l"),  # area exactly 96^2 is large
        (224, 96, 95.99, "m"),
        (448, 64, 64, "m"),  # s = 2: (64)^2 is the small/medium edge
        (448, 64, 63.99, "s"),
        (448, 192, 192, "l"),
        (448, 96, 96, "m"),  # large at 224 px, medium at 448 px
    ],
)
def test_box_miou_bucket_thresholds(box_miou, image_size, side_w, side_h, bucket):
    box = [0, 0, side_w, side_h]
    out = box_miou.compute(predictions=[box], references=[box], image_size=image_size)
    counts = {b: out[f"count_{b}"] for b in "sml"}
    assert counts == {b: int(b == bucket) for b in "sml"}
    assert out[f"miou_{bucket}"] == pytest.approx(1.0)
    for other in set("sml") - {bucket}:
        assert math.isnan(out[f"miou_{other}"])  # empty buckets are NaN


def test_box_miou_equals_torchvision_box_iou_diagonal(box_miou):
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=generator) * 150
    wh = torch.rand(50, 2, generator=generator) * 70 + 1
    gt = torch.cat([xy, xy + wh], dim=1).double()
    pred = (gt + torch.randn(50, 4, generator=generator, dtype=torch.float64) * 8).clamp(min=0)
    pred = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:]), torch.maximum(pred[:, :2], pred[:, 2:])], dim=1)
    out = box_miou.compute(predictions=pred.tolist(), references=gt.tolist())
    assert out["miou"] == pytest.approx(box_iou(pred, gt).diagonal().mean().item(), rel=1e-12)


def test_box_miou_parse_ok_and_streaming(box_miou):
    preds = [[0, 0, 2, 2], [0, 0, 14, 14], [0, 0, 10, 10], [5, 5, 15, 15]]
    refs = [[1, 1, 3, 3], [0, 0, 20, 20], [0, 0, 10, 10], [0, 0, 10, 10]]
    whole = box_miou.compute(predictions=preds, references=refs, parsed=[True, False, True, True])
    assert whole["parse_ok"] == pytest.approx(0.75)
    # IoUs: 1/7, 196/400, 1, 25/175 = 1/7
    assert whole["miou"] == pytest.approx((1 / 7 + 0.49 + 1 + 1 / 7) / 4)
    box_miou.add_batch(predictions=preds[:2], references=refs[:2])
    box_miou.add_batch(predictions=preds[2:], references=refs[2:])
    streamed = box_miou.compute()
    assert "parse_ok" not in streamed
    assert streamed["miou"] == pytest.approx(whole["miou"])


@pytest.mark.parametrize(
    "preds, refs, kwargs, message",
    [
        ([[0, 0, 1, 1]], [[2, 2, 2, 5]], {}, r"references\[0\].*degenerate"),
        ([[0, 0, 1, 1]], [[0, 5, 3, 2]], {}, r"references\[0\].*degenerate"),
        ([[3, 0, 1, 1]], [[0, 0, 3, 3]], {}, r"predictions\[0\].*not an xyxy box"),
        ([[0, 0, 1]], [[0, 0, 3, 3]], {}, r"predictions\[0\] must be one xyxy box of 4 numbers"),
        ([[0, 0, 1, 1]], [[0, 0, float("inf"), 3]], {}, r"references\[0\] has a non-finite"),
        ([[0, 0, 1, 1]], [[0, 0, 3, 3]], {"parsed": [True, True]}, "parsed has 2 flags"),
        ([[0, 0, 1, 1]], [[0, 0, 3, 3]], {"image_size": 0}, "image_size must be a positive"),
    ],
)
def test_box_miou_bad_input(box_miou, preds, refs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        box_miou.compute(predictions=preds, references=refs, **kwargs)


# ----------------------------------------------------------------------------------------------- rec_accuracy


REC_PREDS = [[0, 0, 10, 10], [0, 0, 2, 2], None, [], [0, 0, 10, 10]]
REC_REFS = [[0, 0, 10, 10], [1, 1, 3, 3], [0, 0, 5, 5], [0, 0, 5, 5], [0, 0, 10, 20]]
# IoUs by hand: 1, 1/7, missing, missing, 100/200 = 0.5 (exactly at the default threshold)


def test_rec_accuracy_hand_computed(rec_accuracy):
    out = rec_accuracy.compute(predictions=REC_PREDS, references=REC_REFS)
    assert out["accuracy"] == pytest.approx(1 / 5)  # only IoU 1 is > 0.5 (0.5 itself is not, as Groma's ">")
    assert out["miou"] == pytest.approx((1 + 1 / 7 + 0 + 0 + 0.5) / 5)  # misses count as IoU 0 -> 23/70
    assert out["missing_rate"] == pytest.approx(2 / 5)
    assert out["count"] == 5


def test_rec_accuracy_threshold_and_strictness(rec_accuracy):
    inclusive = rec_accuracy.compute(predictions=REC_PREDS, references=REC_REFS, strict=False)
    assert inclusive["accuracy"] == pytest.approx(2 / 5)  # IoU 1 and IoU 0.5 >= 0.5
    low = rec_accuracy.compute(predictions=REC_PREDS, references=REC_REFS, iou_threshold=0.1)
    assert low["accuracy"] == pytest.approx(3 / 5)  # 1/7 = 0.143 > 0.1 joins them; misses stay wrong


@pytest.mark.parametrize(
    "preds, refs, kwargs, message",
    [
        ([[0, 0, 1, 1]], [[0, 0, 0, 3]], {}, r"references\[0\].*degenerate"),
        ([[0, 0, 1, 1]], [None], {}, r"references\[0\] is missing"),
        ([[2, 0, 1, 1]], [[0, 0, 3, 3]], {}, r"predictions\[0\].*not an xyxy box"),
        ([[0, 0, 1, 1, 1]], [[0, 0, 3, 3]], {}, r"predictions\[0\] must be one xyxy box"),
        ([[0, 0, 1, 1]], [[0, 0, 3, 3]], {"iou_threshold": 1.5}, "iou_threshold must be a number in"),
    ],
)
def test_rec_accuracy_bad_input(rec_accuracy, preds, refs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rec_accuracy.compute(predictions=preds, references=refs, **kwargs)


# ----------------------------------------------------------------------------------------------- box_average_recall


def test_ar_one_image_two_gt_one_perfect_prediction(box_ar):
    # GT: a 10x10 (small) and a 100x100 (large) box; the one prediction is the small box exactly.
    # Recall is 1/2 at every IoU threshold -> AR = AR50 = AR75 = 0.5; small: 1/1, large: 0/1, no medium GT.
    out = box_ar.compute(predictions=[[[0, 0, 10, 10]]], references=[[[0, 0, 10, 10], [50, 50, 150, 150]]])
    assert (out["ar"], out["ar50"], out["ar75"]) == pytest.approx((0.5, 0.5, 0.5))
    assert out["ar_s"] == pytest.approx(1.0) and out["ar_l"] == pytest.approx(0.0)
    assert math.isnan(out["ar_m"])
    assert (out["num_queries"], out["num_gt"], out["num_predictions"]) == (1, 2, 1)


def test_ar_partial_overlap_counts_half_the_thresholds(box_ar):
    # IoU([0,0,100,72], [0,0,100,100]) = 7200 / 10000 = 0.72: matched at 0.50, 0.55, 0.60, 0.65, 0.70,
    # i.e. 5 of the 10 thresholds -> AR 0.5, AR50 1, AR75 0; the GT is large (10000 >= 96^2).
    out = box_ar.compute(predictions=[[[0, 0, 100, 72]]], references=[[[0, 0, 100, 100]]])
    assert (out["ar"], out["ar50"], out["ar75"], out["ar_l"]) == pytest.approx((0.5, 1.0, 0.0, 0.5))


def test_ar_averages_over_categories(box_ar):
    # Query 1 finds its only GT; query 2 finds neither of its 2 GT.
    preds = [[[0, 0, 10, 10]], []]
    refs = [[[0, 0, 10, 10]], [[0, 0, 5, 5], [5, 5, 10, 10]]]
    # Different categories: mean of per-category recalls (1 + 0) / 2.
    assert box_ar.compute(predictions=preds, references=refs, category_ids=[3, 7])["ar"] == pytest.approx(0.5)
    # One category: matched GT over all GT, 1 / 3.
    assert box_ar.compute(predictions=preds, references=refs)["ar"] == pytest.approx(1 / 3)


def test_ar_max_dets_keeps_the_first_boxes_in_order(box_ar):
    preds = [[[50, 50, 60, 60], [0, 0, 10, 10]]]  # the right box comes second
    refs = [[[0, 0, 10, 10]]]
    assert box_ar.compute(predictions=preds, references=refs, max_dets=1)["ar"] == 0.0
    assert box_ar.compute(predictions=preds, references=refs, max_dets=2)["ar"] == pytest.approx(1.0)


def test_ar_reference_areas_move_size_buckets(box_ar):
    # A 10x10 box whose (mask) area is given as 5000: medium (32^2 <= 5000 <= 96^2), not small.
    out = box_ar.compute(predictions=[[[0, 0, 10, 10]]], references=[[[0, 0, 10, 10]]], reference_areas=[[5000.0]])
    assert out["ar_m"] == pytest.approx(1.0)
    assert math.isnan(out["ar_s"]) and math.isnan(out["ar_l"])


@pytest.mark.parametrize(
    "preds, refs, kwargs, message",
    [
        ([[]], [[[0, 0, 0, 5]]], {}, r"references\[0\]\[0\].*degenerate"),
        ([[[4, 4, 1, 1]]], [[[0, 0, 5, 5]]], {}, r"predictions\[0\]\[0\].*not an xyxy box"),
        ([[[4, 4, 1]]], [[[0, 0, 5, 5]]], {}, r"predictions\[0\]\[0\] must be one xyxy box"),
        ([[]], [[[0, 0, 5, 5]]], {"category_ids": [1, 2]}, "category_ids has 2 entries"),
        ([[]], [[[0, 0, 5, 5]]], {"category_ids": ["cat"]}, "category_ids must be integers"),
        ([[]], [[[0, 0, 5, 5]]], {"max_dets": 0}, "max_dets must be a positive integer"),
        ([[]], [[[0, 0, 5, 5]]], {"reference_areas": [[1.0, 2.0]]}, r"reference_areas\[0\] needs one area"),
    ],
)
def test_ar_bad_input(box_ar, preds, refs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        box_ar.compute(predictions=preds, references=refs, **kwargs)


# ----------------------------------------------------------------------------------------------- vqa_accuracy


@pytest.fixture(scope="module")
def vqa_functions():
    """The normalisation helpers of the loaded module (evaluate imports the file as a dynamic module)."""
    module = sys.modules[type(evaluate.load(str(METRICS_DIR / "vqa_accuracy"))).__module__]
    return module


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Two dogs!", "2 dogs"),  # "!" touches no space -> becomes a space; "two" -> "2"
        ("The cat.", "cat"),  # trailing period removed, article dropped
        ("An Apple", "apple"),
        ("none", "0"),
        ("  ten\n", "10"),
        ("dont", "don't"),  # contraction restored
        ("1,000", "1000"),  # a digit,digit comma makes every mark be deleted instead of spaced
        ("yes, sir", "yes sir"),  # ", " touches a space -> deleted
        ("black/white", "black white"),  # "/" touches no space -> space
        ("3.5", "3.5"),  # a period before a digit stays
        ("well - ok", "well ok"),
    ],
)
def test_vqa_answer_normalisation(vqa_functions, raw, normalized):
    assert vqa_functions.normalize_answer(raw) == normalized


def test_vqa_ten_annotator_formula(vqa):
    three_of_ten = ["2"] * 3 + ["3"] * 7
    # pred "2": the 3 annotators who said "2" see 2 others agreeing -> 2/3 each; the 7 others see 3 -> 1 each;
    # (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa.compute(predictions=["Two!"], references=[three_of_ten])["accuracy"] == pytest.approx(0.9)
    # pred "3": every leave-one-out subset still has >= 6 "3"s -> 1.0
    assert vqa.compute(predictions=["three"], references=[three_of_ten])["accuracy"] == pytest.approx(1.0)
    # one "2": its annotator sees 0 -> 0; the 9 others see 1 -> 1/3 each; 9 * 1/3 / 10 = 0.3
    # two "2": 2 * 1/3 + 8 * 2/3 = 6, / 10 = 0.6;  no "2" at all -> 0
    out = vqa.compute(
        predictions=["2", "2", "2"],
        references=[["2"] + ["5"] * 9, ["2"] * 2 + ["5"] * 8, ["5"] * 10],
    )
    assert out["accuracy"] == pytest.approx((0.3 + 0.6 + 0.0) / 3)
    assert out["count"] == 3


def test_vqa_official_reference_handling(vqa):
    # The official script does not normalise stored answers (they are pre-normalised), so a raw "two" never
    # matches the normalised prediction "2" ...
    assert vqa.compute(predictions=["two"], references=[["two"] * 10])["accuracy"] == 0.0
    # ... unless asked to normalise the references too.
    out = vqa.compute(predictions=["two"], references=[["two"] * 10], normalize_references=True)
    assert out["accuracy"] == 1.0


def test_vqa_single_answer_exact_match(vqa):
    # GQA: one answer per question, exact match after normalising the prediction; a plain string or a 1-list.
    assert vqa.compute(predictions=["Yes.", "left"], references=["yes", "right"])["accuracy"] == pytest.approx(0.5)
    assert vqa.compute(predictions=["The table"], references=[["table"]])["accuracy"] == 1.0


def _fake_spacy(monkeypatch, lemmas=None, missing_model=False):
    """Install a stand-in `spacy` whose pipeline tags every word as NOUN with lemma lemmas.get(word, word)."""

    def load(name):
        assert name == "en_core_web_sm"
        if missing_model:
            raise OSError("[E050] Can't find model 'en_core_web_sm'")
        return lambda text: [
            types.SimpleNamespace(text=word, pos_="NOUN", lemma_=lemmas.get(word, word)) for word in text.split()
        ]

    # `Language` because datasets' pickler checks isinstance(obj, spacy.Language) once spacy is imported.
    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(load=load, Language=type("Language", (), {})))


def test_vqa_lemmatize_okvqa(vqa, monkeypatch):
    refs = [["dog"] * 10]
    assert vqa.compute(predictions=["dogs"], references=refs)["accuracy"] == 0.0
    _fake_spacy(monkeypatch, lemmas={"dogs": "dog"})
    assert vqa.compute(predictions=["dogs"], references=refs, lemmatize=True)["accuracy"] == 1.0


def test_vqa_lemmatize_without_spacy_says_what_to_install(vqa, monkeypatch):
    class _BlockSpacy:
        """A meta-path finder under which `import spacy` fails, whether or not spaCy is installed."""

        def find_spec(self, name, path=None, target=None):
            if name == "spacy" or name.startswith("spacy."):
                raise ImportError(f"No module named {name!r}")
            return None

    monkeypatch.delitem(sys.modules, "spacy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BlockSpacy(), *sys.meta_path])
    with pytest.raises(ImportError, match="pip install spacy"):
        vqa.compute(predictions=["dogs"], references=[["dog"] * 10], lemmatize=True)
    _fake_spacy(monkeypatch, missing_model=True)
    with pytest.raises(ImportError, match="spacy download en_core_web_sm"):
        vqa.compute(predictions=["dogs"], references=[["dog"] * 10], lemmatize=True)


@pytest.mark.parametrize(
    "preds, refs, message",
    [
        (["yes"], [[]], r"references\[0\] is empty"),
        (["yes", None], [["yes"], ["no"]], r"predictions\[1\] is None"),
        ([None], [["yes"]], "don't match the expected format"),  # evaluate's own check of the first example
        ([3], [["yes"]], "don't match the expected format"),
    ],
)
def test_vqa_bad_input(vqa, preds, refs, message):
    with pytest.raises(ValueError, match=message):
        vqa.compute(predictions=preds, references=refs)
