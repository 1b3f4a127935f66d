"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) through pycocoevalcap, as COCOEvalCap computes them.

This is what VPGTrans (COCO Karpathy test, NoCaps val) and Groma (region captioning on Visual Genome and
RefCOCOg) report. Captions and references are lower-cased and tokenised by the Stanford PTBTokenizer with
punctuation dropped, then scored by pycocoevalcap's Bleu(4) (corpus-level, "closest" reference length),
Meteor 1.5, Rouge (ROUGE-L F, beta 1.2) and Cider (CIDEr-D: n = 1..4, sigma 6, clipped, x10). The tokenizer
and METEOR run Java (`java` on PATH); pycocoevalcap's tokenizer writes its temporary input file next to its jar,
so that package folder must be writable. SPICE is left out: it downloads Stanford CoreNLP models at run time.

CIDEr weighs n-grams by their document frequency over the references of the evaluated set, so it is only
meaningful on a corpus: on a single sample every n-gram has IDF log(1/1) = 0 and CIDEr is 0.
"""

import shutil

import datasets
import evaluate
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

_CITATION = """\
@article{chen2015microsoft,
  title   = {Microsoft COCO Captions: Data Collection and Evaluation Server},
  author  = {Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
             Dollar, Piotr and Zitnick, C. Lawrence},
  journal = {arXiv:1504.00325},
  year    = {2015}
}
@inproceedings{vedantam2015cider,
  title     = {CIDEr: Consensus-based Image Description Evaluation},
  author    = {Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle = {CVPR},
  year      = {2015}
}
@inproceedings{denkowski2014meteor,
  title     = {Meteor Universal: Language Specific Translation Evaluation for Any Target Language},
  author    = {Denkowski, Michael and Lavie, Alon},
  booktitle = {WMT},
  year      = {2014}
}
"""

_DESCRIPTION = """\
COCO caption evaluation (pycocoevalcap): BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) of one generated caption per
image against one or more reference captions, after PTB tokenisation (Java). Without Java: `tokenize=False` on normalised captions, and `meteor` is None.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per image (or region).
    references (`list` of `list` of `str`): the reference captions of each image, at least one each.
    tokenize (`bool`, default True): run the PTBTokenizer (lower-case, split punctuation, drop it), as
        COCOEvalCap does. False scores the strings split on whitespace as given.
Returns:
    bleu_1, bleu_2, bleu_3, bleu_4, meteor, rouge_l, cider (`float`): corpus scores, as COCOEvalCap reports them
        (CIDEr on its usual x10 scale, e.g. 1.2 for "120"; the others in [0, 1]); `meteor` is None without Java.
Examples:
    >>> metric = evaluate.load("recipes/metrics/caption_metrics")
    >>> sorted(metric.compute(predictions=["a red star"], references=[["a red star", "a star"]]))
    ['bleu_1', 'bleu_2', 'bleu_3', 'bleu_4', 'cider', 'meteor', 'rouge_l']
"""


def _tokenize(predictions, references):
    """PTB-tokenise predictions and references in one Java call; returns ({i: [pred]}, {i: [refs...]})."""
    captions = {("pred", i): [{"caption": p}] for i, p in enumerate(predictions)}
    captions.update({("ref", i): [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    tokenized = PTBTokenizer().tokenize(captions)
    if set(tokenized) != set(captions):
        raise RuntimeError("the PTBTokenizer returned a different number of lines than captions it was given")
    res = {i: tokenized[("pred", i)] for i in range(len(predictions))}
    gts = {i: tokenized[("ref", i)] for i in range(len(references))}
    return res, gts


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
        )

    def _compute(self, predictions, references, tokenize=True):
        if len(predictions) == 0:
            raise ValueError("caption_metrics needs at least one caption, got none")
        for i, (pred, refs) in enumerate(zip(predictions, references)):
            if pred is None:
                raise ValueError(f"predictions[{i}] is None; pass an empty string for an empty caption")
            if not refs or any(not isinstance(r, str) or not r.strip() for r in refs):
                raise ValueError(f"references[{i}] must be a non-empty list of non-empty strings, got {refs!r}")
        java = shutil.which("java") is not None
        if tokenize:
            if not java:
                raise RuntimeError(
                    "caption_metrics: PTB tokenisation (tokenize=True) runs Java and `java` is not on PATH; install "
                    "Java, or pass tokenize=False with captions already lower-cased and stripped of punctuation"
                )
            res, gts = _tokenize(predictions, references)
        else:
            res = {i: [" ".join(p.split())] for i, p in enumerate(predictions)}
            gts = {i: [" ".join(r.split()) for r in refs] for i, refs in enumerate(references)}

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        # Meteor starts a Java process that lives as long as the scorer object, i.e. for this call only. Without Java
        # METEOR is reported as None (missing), never replaced by another score.
        meteor = float(Meteor().compute_score(gts, res)[0]) if java else None
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        result = {f"bleu_{n + 1}": float(score) for n, score in enumerate(bleu)}
        result.update(meteor=meteor, rouge_l=float(rouge), cider=float(cider))
        return result
