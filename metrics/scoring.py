"""Scoring of generated answers: one predictions.jsonl record per row (raw and final answer, confidence, scores,
failure tag) and the `metrics` block of eval_results.json (definitions in metrics/evaluation.py's docstring)."""

from metrics.abstention.abstention import abstention_scores
from metrics.anls.anls import anls_scores
from metrics.confidence import ABSTAIN_ANSWER, is_abstained
from metrics.exact_match.exact_match import exact_match_scores
from metrics.gallery import parse_meta, tag_failure
from metrics.relaxed_accuracy.relaxed_accuracy import relaxed_accuracy_scores
from metrics.selective_vqa.selective_vqa import selective_scores
from metrics.vqa_accuracy.vqa_accuracy import vqa_accuracy_scores

METRIC_FNS = {
    "exact_match": exact_match_scores,
    "anls": anls_scores,
    "vqa_accuracy": vqa_accuracy_scores,
    "relaxed_accuracy": relaxed_accuracy_scores,
}


def user_turn(messages: list, suffix: str) -> dict:
    """The row's user turn with the prompt suffix appended to its last text part."""
    content = [dict(part) for part in messages[0]["content"]]
    last_text = max(i for i, part in enumerate(content) if part["type"] == "text")
    content[last_text]["text"] += suffix
    return {"role": "user", "content": content}


def build_records(rows: dict, results: list[dict], metric: str, threshold: float, offset: int = 0) -> list[dict]:
    """One predictions.jsonl record per row of a batch (`rows`: columns as `ds[a:b]` gives them; `offset`: its first
    index): raw and final answer, confidence, scores, error tag. An unreadable row scores 0 and abstains on nothing."""
    golds, answers = rows["answers"], [r["answer"] for r in results]
    readable = [r["image_error"] is None for r in results]
    abstained = [ok and is_abstained(r["answer"], r["confidence"], threshold) for ok, r in zip(readable, results)]
    finals = [ABSTAIN_ANSWER if flag else a for a, flag in zip(answers, abstained)]
    scores, final_scores = METRIC_FNS[metric](answers, golds), METRIC_FNS[metric](finals, golds)
    records = []
    for i, result in enumerate(results):
        record = {
            "index": offset + i,
            "id": rows["id"][i],
            "question_type": rows["question_type"][i],
            "answerable": rows["answerable"][i],
            "question": user_turn(rows["messages"][i], "")["content"][-1]["text"],
            "golds": golds[i],
            "answer": answers[i],
            "answer_tokens": result["num_tokens"],
            "confidence": result["confidence"],
            "abstained": abstained[i],
            "final_answer": finals[i],
            "score": scores[i] if readable[i] else 0.0,
            "final_score": final_scores[i] if readable[i] else 0.0,
            "error_tag": None,
            "image_error": result["image_error"],
        }
        if record["final_score"] < 1.0:
            record["error_tag"] = tag_failure(record, parse_meta(rows["meta"][i]))
        records.append(record)
    return records


def compute_metrics(records: list[dict], metric: str, fit_records: list[dict] | None) -> dict:
    """The `metrics` block (definitions in the module docstring)."""
    answerable = [r for r in records if r["answerable"]]
    mean = lambda values: sum(values) / len(values) if values else None  # None: no such rows (never a fake 0)
    result = {
        metric: mean([r["score"] for r in answerable]),
        f"{metric}_after_abstention": mean([r["final_score"] for r in answerable]),
    }
    if len(answerable) < len(records):
        result[f"{metric}_all_rows"] = mean([r["score"] for r in records])
        result.update(abstention_scores([r["abstained"] for r in records], [r["answerable"] for r in records]))
        result["abstain_rate"] = mean([float(r["abstained"]) for r in records])
        # The model's own abstentions (it said the abstention answer or nothing), before any confidence threshold:
        # what training taught, separate from the post-hoc threshold policy above.
        said = [r["image_error"] is None and is_abstained(r["answer"], 1.0, 0.0) for r in records]
        own = abstention_scores(said, [r["answerable"] for r in records])
        result.update({f"model_{k}": v for k, v in own.items()})
    if len(records) >= 2:  # the risk-coverage AUC needs two points
        fit = (None, None)
        if fit_records:
            fit = ([r["confidence"] for r in fit_records], [r["score"] for r in fit_records])
        result.update(selective_scores([r["confidence"] for r in records], [r["score"] for r in records], *fit))
    return result


def per_question_type(records: list[dict], metric: str) -> dict:
    groups = {}
    for r in records:
        groups.setdefault(r["question_type"], []).append(r)
    mean = lambda rs, key: sum(float(r[key]) for r in rs) / len(rs)
    return {
        qtype: {
            "count": len(rs),
            metric: mean(rs, "score"),
            "abstain_rate": mean(rs, "abstained"),
            "mean_confidence": mean(rs, "confidence"),
        }
        for qtype, rs in sorted(groups.items())
    }


def count_rows(records, failure_counts, shown: int, fit_records) -> dict:
    return {
        "rows": len(records),
        "answerable": sum(r["answerable"] for r in records),
        "unanswerable": sum(not r["answerable"] for r in records),
        "abstained": sum(r["abstained"] for r in records),
        "empty_answers": sum(not r["answer"] for r in records),
        "unreadable_images": sum(r["image_error"] is not None for r in records),
        "failures": sum(failure_counts.values()),
        "gallery": shown,
        "threshold_rows": len(fit_records or []),
        "threshold_unreadable_images": sum(r["image_error"] is not None for r in fit_records or []),
    }
