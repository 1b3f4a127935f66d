"""VQA accuracy (Antol et al. 2015; VQAv2, OK-VQA, GQA) with the official answer normalisation.

Reproduces the official VQA evaluation (`vqaEval.py`, also vendored by LAVIS as `vqa_tools/vqa_eval.py`, which
VPGTrans uses):
- the predicted answer: newlines/tabs -> spaces, strip, punctuation processing, then lower-case, number words
  -> digits ("none"/"zero" -> "0" ... "ten" -> "10"), articles (a, an, the) dropped, missing apostrophes restored
  ("dont" -> "don't");
- the human answers are taken as stored (the official annotations are already normalised); only when the
  annotators disagree is the punctuation processing applied to them. `normalize_references=True` normalises
  them fully like the prediction, for raw answer strings (e.g. "two" would otherwise never match "2");
- accuracy of a question with k >= 2 human answers: for each annotator, min(1, #other annotators whose answer
  equals the prediction / 3), averaged over the k leave-one-out subsets (the 10-choose-9 average for VQAv2's
  10 answers);
- a question with a single reference answer (GQA) scores 1 for an exact match after normalisation, else 0
  (LAVIS' GQA task: normalised prediction vs the stored answer).
OK-VQA in LAVIS additionally lemmatises the predicted answer with spaCy `en_core_web_sm` (NOUN and VERB tokens
replaced by their lemma) before scoring: `lemmatize=True` (needs `pip install spacy` and
`python -m spacy download en_core_web_sm`).
"""

import re

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{antol2015vqa,
  title     = {VQA: Visual Question Answering},
  author    = {Antol, Stanislaw and Agrawal, Aishwarya and Lu, Jiasen and Mitchell, Margaret and Batra, Dhruv and
               Zitnick, C. Lawrence and Parikh, Devi},
  booktitle = {ICCV},
  year      = {2015}
}
@inproceedings{goyal2017making,
  title     = {Making the V in VQA Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author    = {Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle = {CVPR},
  year      = {2017}
}
"""

_DESCRIPTION = """\
VQA accuracy: min(1, #humans that gave the predicted answer / 3), averaged over the leave-one-annotator-out
subsets, after the official VQA answer normalisation; exact match for single-answer references (GQA); optional
spaCy lemmatisation of predictions (OK-VQA as in LAVIS).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated answer per question.
    references (`list` of `list` of `str`, or `list` of `str`): the human answers per question (10 for VQAv2 and
        OK-VQA), or one answer per question (GQA; a plain string or a one-element list).
    normalize_references (`bool`, default False): also apply the full normalisation to the reference answers.
        Keep False to reproduce the official numbers on official (pre-normalised) annotations; set True for raw
        answer strings.
    lemmatize (`bool`, default False): lemmatise NOUN/VERB tokens of the predictions with spaCy
        `en_core_web_sm` first (OK-VQA protocol of LAVIS).
Returns:
    accuracy (`float`): mean per-question accuracy in [0, 1] (the official script prints 100x this).
    count (`int`): number of questions.
Examples:
    >>> metric = evaluate.load("recipes/metrics/vqa_accuracy")
    >>> metric.compute(predictions=["Two!"], references=[["2"] * 3 + ["3"] * 7])["accuracy"]
    0.9
"""

# The official tables (VQA vqaEval.py), reproduced as data.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    # Official quirk kept: this entry maps the apostrophe form to the form without it.
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
# A period not followed by a digit ("3.5" keeps its point). The official pattern "(?!<=\d)(\.)(?!\d)" has a
# mistyped look-behind that is a look-ahead which never fires in front of ".", so it reduces to this one.
_PERIOD = re.compile(r"\.(?!\d)")
# Official quirk kept: it calls periodStrip.sub("", text, re.UNICODE), which passes re.UNICODE (32) as `count`,
# so at most 32 periods are removed.
_PERIOD_MAX_COUNT = int(re.UNICODE)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The official `processPunctuation`: each mark is deleted where it touches a space (or anywhere, if the text
    has a digit,digit comma like "1,000") and replaced by a space otherwise; then stray periods are removed."""
    out = text
    delete_everywhere = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _PUNCTUATION:
        # The official test looks at the original text, not at the text being edited.
        if mark + " " in text or " " + mark in text or delete_everywhere:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_COUNT)


def process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lower-case, number words -> digits, drop articles, restore apostrophes."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(answer: str) -> str:
    """The full official normalisation applied to a predicted answer, e.g. "Two dogs!" -> "2 dogs"."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def vqa_score(prediction: str, answers: list) -> float:
    """Accuracy of one normalised prediction against k >= 2 human answers: the mean over annotators i of
    min(1, #{j != i : answers[j] == prediction} / 3)."""
    matches = sum(answer == prediction for answer in answers)
    per_annotator = [min(1.0, (matches - (answer == prediction)) / 3.0) for answer in answers]
    return float(np.mean(per_annotator))


def _spacy_lemmatizer():
    """spaCy's en_core_web_sm pipeline, or an error that says what to install."""
    try:
        import spacy
    except ImportError as error:
        raise ImportError(
            "vqa_accuracy(lemmatize=True) needs spaCy and its English model: "
            "`pip install spacy && python -m spacy download en_core_web_sm`"
        ) from error
    try:
        return spacy.load("en_core_web_sm")
    except OSError as error:
        raise ImportError(
            "vqa_accuracy(lemmatize=True) needs the spaCy model en_core_web_sm: "
            "`python -m spacy download en_core_web_sm`"
        ) from error


def lemmatize_answers(answers: list, nlp) -> list:
    """LAVIS' OK-VQA step: NOUN and VERB tokens replaced by their lemma, tokens joined with single spaces."""
    return [
        " ".join(token.lemma_ if token.pos_ in ("NOUN", "VERB") else token.text for token in nlp(answer))
        for answer in answers
    ]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/GT-Vision-Lab/VQA", "https://visualqa.org/evaluation.html"],
        )

    def _compute(self, predictions, references, normalize_references=False, lemmatize=False):
        if len(predictions) == 0:
            raise ValueError("vqa_accuracy needs at least one question, got none")
        for i, (pred, refs) in enumerate(zip(predictions, references)):
            if pred is None:
                raise ValueError(f"predictions[{i}] is None; pass an empty string for an empty answer")
            if refs is None or len(refs) == 0:
                raise ValueError(f"references[{i}] is empty: every question needs at least one reference answer")
        if lemmatize:
            predictions = lemmatize_answers(predictions, _spacy_lemmatizer())

        scores = []
        for pred, refs in zip(predictions, references):
            answers = [refs] if isinstance(refs, str) else list(refs)
            pred = normalize_answer(pred)
            if normalize_references:
                answers = [normalize_answer(answer) for answer in answers]
            if len(answers) == 1:
                scores.append(float(pred == answers[0]))
                continue
            # Official: the stored answers get the punctuation step only when the annotators disagree.
            if not normalize_references and len(set(answers)) > 1:
                answers = [process_punctuation(answer) for answer in answers]
            scores.append(vqa_score(pred, answers))
        return {"accuracy": float(np.mean(scores)), "count": len(scores)}
