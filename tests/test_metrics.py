"""Metrics: worked examples checked by hand against each reference scorer's definition, via pure functions and
via `evaluate.load` of the local module folders (offline)."""

import functools
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before evaluate is imported: a Hub lookup would wait ~46 s to fail

import evaluate  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

from metrics.abstention.abstention import abstention_scores, is_abstention  # noqa: E402
from metrics.anls.anls import anls_score  # noqa: E402
from metrics.exact_match.exact_match import exact_match_score  # noqa: E402
from metrics.exact_match.exact_match import normalize_answer as normalize_custom  # noqa: E402
from metrics.relaxed_accuracy.relaxed_accuracy import relaxed_accuracy_score, relaxed_correct  # noqa: E402
from metrics.selective_vqa.selective_vqa import (  # noqa: E402
    effective_reliability,
    fit_phi_threshold,
    risk_coverage_curve,
    selective_scores,
)
from metrics.vqa_accuracy.vqa_accuracy import normalize_answer as normalize_evalai  # noqa: E402
from metrics.vqa_accuracy.vqa_accuracy import vqa_soft_score  # noqa: E402

STRING_METRICS = ["vqa_accuracy", "anls", "relaxed_accuracy", "exact_match"]


@functools.cache
def load_metric(name: str):
    return evaluate.load(str(ROOT / "metrics" / name))


# ---------------------------------------------------------------- vqa_accuracy (m4c TextVQAAccuracyEvaluator)


@pytest.mark.parametrize(
    "matching, expected",
    [
        # m golds of 10 match. Dropping a matching gold leaves m-1 matches, dropping another leaves m:
        (1, 0.3),  # (1 * min(1, 0/3) + 9 * min(1, 1/3)) / 10 = 3/10
        (2, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
        (3, 0.9),  # (3 * 2/3 + 7 * 1) / 10 = 9/10
        (4, 1.0),  # (4 * 1 + 6 * 1) / 10
        (0, 0.0),
    ],
)
def test_vqa_accuracy_leave_one_out(matching, expected):
    golds = ["coca cola"] * matching + ["pepsi"] * (10 - matching)
    assert vqa_soft_score("Coca Cola", golds) == pytest.approx(expected)


def test_vqa_accuracy_normalises_prediction_and_every_gold():
    # "Coca-Cola" -> lower -> "-" touches no space -> replaced by " " -> "coca cola"; "The coca cola." drops the
    # article and the final period. All three golds therefore match: 1.0.
    golds = ["Coca-Cola", "The coca cola.", "coca cola"] + ["pepsi"] * 7
    assert vqa_soft_score("coca cola", golds) == pytest.approx(0.9)
    # Unanimous golds: the VQA-v2 scorer would skip normalisation here and score "Yes." 0; m4c always normalises.
    assert vqa_soft_score("Yes.", ["yes"] * 10) == 1.0


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two Dogs", "2 dogs"),  # number words -> digits
        ("none", "0"),
        ("the cat", "cat"),  # articles dropped
        ("3.14", "3.14"),  # a period before a digit stays
        ("mr. smith", "mr smith"),
        ("covid-19", "covid 19"),  # "-" not next to a space -> space
        ("x -y-z", "x yz"),  # "-" next to a space anywhere -> every "-" deleted, so "y-z" -> "yz"
        ("1,000", "1000"),  # every comma is deleted first
        ("50%", "50%"),  # % is not in the punctuation list
        ("whats", "what's"),  # contraction restored ...
        ("what's", "what 's"),  # ... but "'s" was split off first, so these two never match
        ("Im", "im"),  # capitalised table keys never match lower-cased text
        ("x." * 33, "x" * 33 + "."),  # at most 32 periods removed (re.UNICODE passed as count)
    ],
)
def test_evalai_normalisation_quirks(raw, normalised):
    assert normalize_evalai(raw) == normalised


def test_vqa_accuracy_edge_cases():
    assert vqa_soft_score("", ["pepsi"] * 10) == 0.0  # empty prediction is valid and scores 0
    assert vqa_soft_score("", ["a"] * 10) == 1.0  # ... unless golds normalise to "" (articles are dropped)
    assert vqa_soft_score("x", ["x"]) == 0.0  # one gold: no other gold is left to agree with


# ---------------------------------------------------------------- anls (lmms-eval / Qwen-VL)


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        ("1O.25", ["10.25"], 0.8),  # "1o.25" vs "10.25": 1 substitution / 5 chars -> 1 - 0.2
        ("ab", ["ax"], 0.5),  # 1 - 1/2 = 0.5: exactly the threshold, kept
        ("abc", ["axx"], 0.0),  # 1 - 2/3 = 0.33 < 0.5 -> 0
        ("invoice", ["receipt", "invoices"], 0.875),  # best gold: 1 insertion / 8 chars
        ("  Total  Amount ", ["total amount"], 1.0),  # case and whitespace collapse -> distance 0
        ("a  b", ["ab"], 0.75),  # "a b" vs "ab": 1 edit, but the RAW length 4 divides -> 1 - 1/4
        ("a b", ["ab"], 1 - 1 / 3),
        ("ß", ["s"], 0.5),  # 1 edit / len("ß".upper() == "SS") = 1/2 -> 0.5, kept
        ("", ["x"], 0.0),  # empty prediction: 1 edit / 1 -> 0
        ("", [""], 1.0),  # both empty: distance taken as 0
    ],
)
def test_anls_worked_examples(prediction, golds, expected):
    assert anls_score(prediction, golds) == pytest.approx(expected)


# ---------------------------------------------------------------- relaxed_accuracy (lmms-eval ChartQA)


@pytest.mark.parametrize(
    "prediction, gold, expected",
    [
        ("12", "12%", False),  # 12 vs 0.12: only the side with "%" is divided by 100
        ("12%", "12", False),  # 0.12 vs 12
        ("12%", "12%", True),
        ("0.12", "12%", True),  # 0.12 vs 0.12
        ("105", "100", True),  # |105 - 100| / 100 = 0.05 <= 0.05: inclusive
        ("95", "100", True),
        ("105.1", "100", False),  # 0.051 > 0.05
        (" 12", "12", True),  # float() ignores surrounding whitespace
        ("0.0", "0", False),  # a zero gold is falsy: compared as strings
        ("0", "0", True),
        ("Yes", "yes", True),  # strings: equal ignoring case
        (" Paris", "paris", False),  # ... and nothing else is stripped
        ("1,000", "1000", False),  # "1,000" is not a float: string comparison
        ("inf", "inf", False),  # |inf - inf| / inf is NaN
        ("", "12", False),  # empty prediction is valid
    ],
)
def test_relaxed_correctness_worked_examples(prediction, gold, expected):
    assert relaxed_correct(prediction, gold) is expected


def test_relaxed_accuracy_takes_best_gold():
    assert relaxed_accuracy_score("12", ["12%", "12.3"]) == 1.0  # second gold: |12 - 12.3| / 12.3 = 0.024


# ---------------------------------------------------------------- exact_match (custom set)


@pytest.mark.parametrize(
    "prediction, gold, expected",
    [
        ("  Paris. ", "paris", 1.0),  # case, whitespace, trailing period
        ("'yes'", "Yes", 1.0),  # surrounding quotes
        ("１２", "12", 1.0),  # NFKC: full-width digits
        ("Straße", "STRASSE", 1.0),  # case-fold, stronger than lower()
        ("Unanswerable.", "unanswerable", 1.0),  # the project's abstention answer is an ordinary string here
        ("the cat", "cat", 0.0),  # articles count
        ("1,000", "1000", 0.0),  # number formats count
        ("", "x", 0.0),
    ],
)
def test_exact_match_worked_examples(prediction, gold, expected):
    assert exact_match_score(prediction, [gold]) == expected


def test_exact_match_normalisation_is_idempotent():
    for text in ["  Paris. ", "A\tB\nC", "１２", "'yes'?"]:
        assert normalize_custom(normalize_custom(text)) == normalize_custom(text)


# ---------------------------------------------------------------- through evaluate.load


@pytest.mark.parametrize(
    "name, expected_scores",
    [
        ("vqa_accuracy", [0.3, 0.0, 1.0]),
        ("anls", [0.8, 0.0, 1.0]),
        ("relaxed_accuracy", [0.0, 0.0, 1.0]),
        ("exact_match", [0.0, 0.0, 1.0]),
    ],
)
def test_string_metrics_through_evaluate_load(name, expected_scores):
    predictions = ["1O.25", "", "coca cola"]  # an empty prediction must score, not crash
    references = [["10.25"] + ["x"] * 9, ["pepsi"] * 10, ["coca cola"] * 10]
    if name == "vqa_accuracy":
        references[0] = ["1o.25"] + ["x"] * 9  # one matching gold -> 0.3
    result = load_metric(name).compute(predictions=predictions, references=references)
    assert set(result) == {name, "scores"}
    assert result["scores"] == pytest.approx(expected_scores)
    assert result[name] == pytest.approx(sum(expected_scores) / 3)


@pytest.mark.parametrize("name", STRING_METRICS)
@pytest.mark.parametrize(
    "predictions, references, message",
    [
        (["a"], [[]], "references\\[0\\] is \\[\\]"),
        (["a", "b"], [["a"]], "2 predictions but 1 reference"),
        (["a"], ["a"], "references\\[0\\] is 'a'"),
    ],
)
def test_string_metrics_reject_bad_inputs(name, predictions, references, message):
    with pytest.raises(ValueError, match=message):
        load_metric(name).compute(predictions=predictions, references=references)


# ---------------------------------------------------------------- selective_vqa (reliable_vqa_eval.py)


def test_risk_coverage_without_ties():
    # Ranked by confidence: scores 1, 0, 1, 1 -> risks 0/1, 1/2, 1/3, 1/4 at coverages 1/4, 2/4, 3/4, 1.
    # Trapezoids: 0.25 * ((0 + 1/2) + (1/2 + 1/3) + (1/3 + 1/4)) / 2 = 0.125 * 23/12 = 23/96.
    result = selective_scores([0.9, 0.8, 0.7, 0.6], [1.0, 0.0, 1.0, 1.0])
    assert result["auc"] == pytest.approx(23 / 96)
    # Only the first point has risk <= 0.2: coverage 1/4 for every tolerance.
    assert [result[f"cov@{r}"] for r in (0.01, 0.05, 0.1, 0.2)] == [0.25] * 4
    assert not any(key.startswith("phi@") for key in result)  # no threshold split, no phi


def test_coverage_at_risk_is_inclusive_and_takes_the_last_point():
    # Risks 0, 0, 0, 0, 1/5: risk 0.2 <= 0.2 is allowed (full coverage); at 0.1 the cut is 4/5.
    result = selective_scores([0.9, 0.8, 0.7, 0.6, 0.5], [1.0, 1.0, 1.0, 1.0, 0.0])
    assert result["cov@0.2"] == 1.0 and result["cov@0.1"] == 0.8
    # Risks 0, 1/2, 1/3, ..., 1/10: points 2..9 exceed 0.1 but the last one (1/10) does not -> coverage 1.
    result = selective_scores([1 - k / 100 for k in range(10)], [1.0, 0.0] + [1.0] * 8)
    assert result["cov@0.1"] == 1.0 and result["cov@0.05"] == 0.1


def test_risk_coverage_with_tied_confidences():
    # Three answers tie at 0.5. The script orders a tie by score (high first), then input order:
    # ranked scores 1 (0.9), 1 (the tied 1.0), 0, 0 -> risks 0, 0, 1/3, 1/2 at coverages 1/4 .. 1.
    # AUC = 0.25 * ((0 + 0) + (0 + 1/3) + (1/3 + 1/2)) / 2 = 7/48 (input order would give 13/48).
    confidences, scores = [0.9, 0.5, 0.5, 0.5], [1.0, 0.0, 1.0, 0.0]
    coverages, risks, order = risk_coverage_curve(confidences, scores)
    assert order == [0, 2, 1, 3]
    assert risks == pytest.approx([0, 0, 1 / 3, 1 / 2])
    result = selective_scores(confidences, scores)
    assert result["auc"] == pytest.approx(7 / 48)
    # Risk 0 holds up to coverage 1/2, but that cut splits the 0.5 tie: it moves back before the tie -> 1/4.
    assert result["cov@0.01"] == 0.25 and result["cov@0.2"] == 0.25


def test_effective_reliability_with_fitted_thresholds():
    # Threshold split ranked 0.9, 0.8, 0.7, 0.6 with scores 1, 0, 1, 0.6:
    #   c=1:   prefix sums 1, 0, 1, 1.6     -> best at 0.6 (the lowest threshold among the best)
    #   c=10:  prefix sums 1, -9, -8, -7.4  -> best at 0.9;  c=100 likewise
    threshold_confidences, threshold_scores = [0.9, 0.8, 0.7, 0.6], [1.0, 0.0, 1.0, 0.6]
    assert fit_phi_threshold(threshold_confidences, threshold_scores, 1) == 0.6
    assert fit_phi_threshold(threshold_confidences, threshold_scores, 10) == 0.9
    # Evaluation split: confidences 0.95, 0.85, 0.65, 0.55 with scores 1, 0, 0.3, 1.
    #   phi@1 (>= 0.6 answers three): (1 - 1 + 0.3) / 4 = 0.075;  phi@10, phi@100 (>= 0.9 answers one): 1/4
    result = selective_scores([0.95, 0.85, 0.65, 0.55], [1.0, 0.0, 0.3, 1.0], threshold_confidences, threshold_scores)
    assert result["phi@1"] == pytest.approx(0.075)
    assert result["phi@10"] == pytest.approx(0.25) and result["phi@100"] == pytest.approx(0.25)


def test_effective_reliability_quirks():
    # All threshold answers wrong: prefix sums -c, -2c; abstaining on all is never a candidate -> threshold 0.9,
    # so the confident wrong answer on the evaluation split costs -c / 2.
    result = selective_scores([0.95, 0.5], [0.0, 1.0], [0.9, 0.1], [0.0, 0.0])
    assert (result["phi@1"], result["phi@10"], result["phi@100"]) == (-0.5, -5.0, -50.0)
    # Ties on the threshold split keep INPUT order: prefix sums 1, 0, 0.6 -> 0.8; but 0, ... -> -1, 0, 0.6 -> 0.5.
    assert fit_phi_threshold([0.8, 0.8, 0.5], [1.0, 0.0, 0.6], 1) == 0.8
    assert fit_phi_threshold([0.8, 0.8, 0.5], [0.0, 1.0, 0.6], 1) == 0.5
    # Scores are rounded to 2 decimals of a percent: 0.00004 -> 0.00% counts as wrong (-c); 1/3 counts 0.3333.
    assert effective_reliability([0.9, 0.9], [0.00004, 1 / 3], cost=10, threshold=0.5) == pytest.approx(
        (-10 + 0.3333) / 2
    )


def test_selective_vqa_through_evaluate_load():
    result = load_metric("selective_vqa").compute(
        predictions=[0.95, 0.85, 0.65, 0.55],
        references=[1.0, 0.0, 0.3, 1.0],
        threshold_predictions=[0.9, 0.8, 0.7, 0.6],
        threshold_references=[1.0, 0.0, 1.0, 0.6],
    )
    assert list(result) == ["auc", "cov@0.01", "cov@0.05", "cov@0.1", "cov@0.2", "phi@1", "phi@10", "phi@100"]
    assert result["phi@1"] == pytest.approx(0.075)
    # Same numbers as the pure function (worked by hand in the tests above):
    assert result == pytest.approx(
        selective_scores([0.95, 0.85, 0.65, 0.55], [1.0, 0.0, 0.3, 1.0], [0.9, 0.8, 0.7, 0.6], [1.0, 0.0, 1.0, 0.6])
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(predictions=[0.9, 0.8], references=[1.0]), "2 predictions but 1 references"),
        (dict(predictions=[0.9, 0.8], references=[1.0, 50.0]), "references\\[1\\] is 50.0"),
        (dict(predictions=[0.9], references=[1.0]), "at least 2"),
        (dict(predictions=[0.9, 0.8], references=[1.0, 0.0], threshold_predictions=[0.5]), "pass both"),
        (
            dict(predictions=[0.9, 0.8], references=[1.0, 0.0], threshold_predictions=[], threshold_references=[]),
            "threshold_references has 0 values",
        ),
    ],
)
def test_selective_vqa_rejects_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_metric("selective_vqa").compute(**kwargs)


# ---------------------------------------------------------------- abstention


def test_abstention_worked_example():
    # abstained:  T  T  F  F  T
    # answerable: F  T  F  T  F   -> unanswerable are #0, #2, #4
    # right abstentions #0, #4 = 2; abstained 3 -> precision 2/3; recall 2/3; F1 2/3; #2 answered -> 1/3;
    # answerable #1, #3, of which #1 abstained on -> over-abstention 1/2
    result = abstention_scores([True, True, False, False, True], [False, True, False, True, False])
    assert result == pytest.approx(
        {
            "abstain_precision": 2 / 3,
            "abstain_recall": 2 / 3,
            "abstain_f1": 2 / 3,
            "hallucination_rate": 1 / 3,
            "answerable_abstain_rate": 1 / 2,
        }
    )
    via_load = load_metric("abstention").compute(
        predictions=[True, True, False, False, True], references=[False, True, False, True, False]
    )
    assert via_load == pytest.approx(result)


def test_abstention_undefined_ratios_are_zero():
    # Nothing abstained, nothing unanswerable: every ratio has a zero denominator.
    assert abstention_scores([False, False], [True, True]) == {
        "abstain_precision": 0.0,
        "abstain_recall": 0.0,
        "abstain_f1": 0.0,
        "hallucination_rate": 0.0,
        "answerable_abstain_rate": 0.0,
    }
    assert abstention_scores([True], [False])["answerable_abstain_rate"] == 0.0  # none answerable: 0, never NaN
    assert abstention_scores([True, False, True], [True, True, False])["answerable_abstain_rate"] == 0.5
    # Never abstaining on unanswerable questions: everything hallucinated.
    assert abstention_scores([False, False], [False, True])["hallucination_rate"] == 1.0
    with pytest.raises(ValueError, match="2 abstention flags but 1"):
        abstention_scores([True, False], [True])


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("unanswerable", True),
        ("  Unanswerable. ", True),
        ("UNANSWERABLE!", True),
        ("it is unanswerable", False),
        ("", False),
    ],
)
def test_is_abstention(answer, expected):
    assert is_abstention(answer) is expected
