"""COCO caption scores on one tokenisation, the one caption-metric path of every recipe (VPGTrans captions, Groma
region captions): CIDEr-D by `cider_d` (no Java, the same on every machine), BLEU / ROUGE-L / METEOR from
pycocoevalcap on the same tokens, METEOR None where Java is missing (`missing_metrics` says so)."""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections import Counter

logger = logging.getLogger("groundvlm")


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
