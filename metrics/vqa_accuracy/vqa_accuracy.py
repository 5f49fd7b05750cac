"""TextVQA accuracy, scored exactly as m4c's `TextVQAAccuracyEvaluator` (the scorer LLaVA and lmms-eval use).

Self-contained on purpose: `evaluate.load("metrics/vqa_accuracy")` copies this one file.
"""

import re

import datasets
import evaluate

_CITATION = """\
@inproceedings{singh2019towards,
  title={Towards VQA Models That Can Read},
  author={Singh, Amanpreet and Natarajan, Vivek and Shah, Meet and Jiang, Yu and Chen, Xinlei and Batra, Dhruv
          and Parikh, Devi and Rohrbach, Marcus},
  booktitle={CVPR},
  year={2019}
}
"""

_DESCRIPTION = """\
TextVQA soft accuracy, a re-implementation of facebookresearch/mmf `mmf/utils/m4c_evaluators.py`
(`EvalAIAnswerProcessor` + `TextVQAAccuracyEvaluator`); lmms-eval's `textvqa_process_results` computes the same.

Per example: normalise the prediction and EVERY gold answer with the EvalAI processor, count the golds equal to the
prediction (m), then average min(1, matches / 3) over the n leave-one-out subsets of the golds. With 10 golds:
m=1 -> 0.3 (not 1/3), m=2 -> 0.6, m=3 -> 0.9, m>=4 -> 1.0.

Quirks reproduced on purpose (they move published numbers):
- Normalisation is always applied to prediction and golds. The VQA-v2 scorer (GT-Vision-Lab, reliable_vqa's
  copy) only normalises when the golds disagree and uses a different, regex-based punctuation step: do not mix.
- Order of steps: lower-case; delete every "," and "?"; "'s" -> " 's"; newline/tab -> space; strip; punctuation
  (below); periods; number words; articles; contractions.
- Punctuation `; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !` is deleted if the text has it next to a space
  anywhere, else replaced by a space ("covid-19" -> "covid 19", but "x -y-z" -> "x yz"). `' : % $ & # *` are
  kept ("50%" != "50"). m4c's extra clause for commas between digits never fires: commas are already gone.
- A period is dropped unless a digit follows ("3.14" kept, "mr. x" -> "mr x"). The reference regex
  `(?!<=\\d)(\\.)(?!\\d)` means this (its first group is a look-AHEAD for "<=", always true), and it passes
  `re.UNICODE` (32) positionally as `count`, so at most 32 periods are removed.
- Number words none/zero..ten -> digits ("none" -> "0"); "a", "an", "the" are dropped, so a prediction "the" equals
  a gold "a" (both normalise to ""); an empty prediction therefore scores 0 unless golds normalise to "" too.
- Contractions are restored from the EvalAI table AFTER "'s" was split off: gold "whats" -> "what's" but a
  prediction "what's" -> "what 's", so they do not match. Table keys with capitals ("Im", "Ive") never match
  because the text is lower-case by then.
- m4c asserts exactly 10 golds; lmms-eval accepts any number. We accept any n >= 1 (n leave-one-out subsets), so
  for TextVQA (always 10) both agree. With one gold, a match scores 0 (no other gold is left to agree).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): one answer per question; "" is valid.
    references (list[list[str]]): the gold answers of each question (10 for TextVQA), at least one each.
Returns:
    vqa_accuracy (float): mean soft accuracy in [0, 1].
    scores (list[float]): per-question soft accuracy.
Example:
    >>> metric = evaluate.load("metrics/vqa_accuracy")
    >>> metric.compute(predictions=["Coca Cola"], references=[["coca cola"] + ["pepsi"] * 9])
    {'vqa_accuracy': 0.3, 'scores': [0.3]}
"""

# EvalAI's tables, as data (ours to reproduce exactly, not to improve).
# fmt: off
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Order matters: each one is decided on the text as it was before any of them was touched.
PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
# fmt: on
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = 32  # m4c passes re.UNICODE (== 32) where re.sub expects `count`


def normalize_answer(answer: str) -> str:
    """EvalAI answer normalisation as m4c's `EvalAIAnswerProcessor.__call__` applies it (quirks in module doc)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    before = text
    for mark in PUNCTUATION:
        touches_space = f"{mark} " in before or f" {mark}" in before
        text = text.replace(mark, "" if touches_space else " ")
    text = _PERIOD_NOT_BEFORE_DIGIT.sub("", text, count=_MAX_PERIODS_REMOVED)
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def vqa_soft_score(prediction: str, golds: list[str]) -> float:
    """Mean over the leave-one-out subsets of the golds of min(1, matches / 3), all answers normalised."""
    _check_golds(golds)
    pred = normalize_answer(prediction)
    hits = [normalize_answer(gold) == pred for gold in golds]
    matches = sum(hits)
    # Same float operations as m4c (min(1, k / 3) per subset, then sum / n) so results agree to the last bit.
    accs = [min(1, float(matches - hit) / 3) for hit in hits]
    return sum(accs) / len(accs)


def vqa_accuracy_scores(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Per-question TextVQA soft accuracy; raises ValueError on mismatched or empty inputs."""
    _check_inputs(predictions, references)
    return [vqa_soft_score(pred, golds) for pred, golds in zip(predictions, references)]


# Copied from metrics.anls.anls._check_golds
def _check_golds(golds) -> None:
    if isinstance(golds, str):
        raise ValueError(f"golds must be a list of strings, got the string {golds!r}: wrap it as [{golds!r}].")
    if len(golds) == 0:
        raise ValueError("an example has an empty list of gold answers: give at least one gold answer per example.")


# Copied from metrics.anls.anls._check_inputs
def _check_inputs(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} reference lists: pass one list of gold "
            "answers per prediction."
        )
    for index, golds in enumerate(references):
        if isinstance(golds, str) or len(golds) == 0:
            raise ValueError(
                f"references[{index}] is {golds!r}: each example needs a non-empty list of gold strings, e.g. ['yes']."
            )


_FEATURES = datasets.Features(
    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
)
_REFERENCE_URLS = ["https://github.com/facebookresearch/mmf/blob/main/mmf/utils/m4c_evaluators.py"]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    # Copied from metrics.anls.anls.Anls._info
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            reference_urls=_REFERENCE_URLS,
        )

    # Copied from metrics.anls.anls.Anls.add_batch
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references (checked first: equal lengths, non-empty golds)."""
        # Checked before Arrow sees the batch, so the error names the fix instead of a schema mismatch.
        _check_inputs(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    # Copied from metrics.anls.anls.Anls._compute with anls->vqa_accuracy
    def _compute(self, predictions, references):
        scores = vqa_accuracy_scores(predictions, references)
        if not scores:
            raise ValueError("got no predictions: pass at least one example (a mean of nothing would hide it).")
        return {"vqa_accuracy": sum(scores) / len(scores), "scores": scores}
