"""caption_metrics (pycocoevalcap: PTBTokenizer and METEOR run Java; each compute call takes a few seconds)."""

import math
import shutil
from pathlib import Path

import evaluate
import pytest

METRICS_DIR = Path(__file__).resolve().parents[2] / "recipes" / "metrics"

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer and METEOR need Java")


@pytest.fixture(scope="module")
def captions():
    return evaluate.load(str(METRICS_DIR / "caption_metrics"))


# One reference per image, so the corpus scores below can be worked out by hand.
REFERENCES = [["a big red star"], ["green circles"], ["a yellow square"]]


def test_identical_captions_score_perfectly_and_beat_unrelated_ones(captions):
    identical = captions.compute(
        predictions=["A big red star.", "green circles", "a yellow square"], references=REFERENCES
    )
    # Each prediction equals its reference after PTB tokenisation (lower-case, "." dropped): every n-gram
    # precision is 1 (the corpus has one 4-gram, matched) and the brevity penalty is 1.
    assert identical["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert identical["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert identical["rouge_l"] == pytest.approx(1.0)
    assert 0.9 < identical["meteor"] <= 1.0

    # Already lower-case and unpunctuated: tokenize=False skips the tokenizer JVM and scores the same.
    partial = captions.compute(
        predictions=["a red star", "sky dark", "many tall trees"], references=REFERENCES, tokenize=False
    )
    # By hand. ROUGE-L F (beta 1.2) per caption, then averaged: "a red star" vs "a big red star": LCS 3,
    # P = 3/3, R = 3/4, F = (1 + 1.44) P R / (R + 1.44 P) = 1.83 / 2.19; the unrelated two score 0.
    assert partial["rouge_l"] == pytest.approx((1.83 / 2.19) / 3, rel=1e-6)
    # Corpus BLEU-1: 3 matched unigrams of c = 3 + 2 + 3 = 8 candidate tokens; reference lengths
    # r = 4 + 2 + 3 = 9 > c, so BP = exp(1 - 9/8).
    assert partial["bleu_1"] == pytest.approx(3 / 8 * math.exp(1 - 9 / 8), rel=1e-6)
    assert 0.0 <= partial["meteor"] < identical["meteor"]
    # CIDEr-D with the same references (same document frequencies): exact captions score above the rest.
    assert identical["cider"] > partial["cider"] >= 0.0
    assert set(identical) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"}


@pytest.mark.parametrize(
    "preds, refs, message",
    [
        (["a cat", "a dog"], [["a cat"], []], r"references\[1\] must be a non-empty list"),
        (["a cat"], [["a cat", "  "]], r"references\[0\] must be a non-empty list of non-empty strings"),
        (["a cat", None], [["a cat"], ["a dog"]], r"predictions\[1\] is None"),
    ],
)
def test_bad_input_is_rejected_before_java_starts(captions, preds, refs, message):
    with pytest.raises(ValueError, match=message):
        captions.compute(predictions=preds, references=refs)
