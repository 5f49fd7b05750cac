"""Failure analysis of an evaluation run: an error-taxonomy tag per failed question, a self-contained HTML gallery of
the worst cases (thumbnails embedded as base64 PNG), grouped by tag with counts, and the risk-coverage plot (PNG).

Records are the dicts of predictions.jsonl (see run_eval.py). A failure is a question whose FINAL answer (after the
abstention decision) scores below 1; a row whose image could not be decoded is one too (`image_error` says why).
"""

import base64
import html
import io
import json
from collections import Counter

from metrics.anls.anls import anls_score
from metrics.exact_match.exact_match import normalize_answer
from metrics.selective_vqa.selective_vqa import risk_coverage_auc, risk_coverage_curve

UNREADABLE_IMAGE = "unreadable_image"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"  # the collator's reason name for the same fault
# Checked in this order, first match wins. Question types go before string heuristics: the skill that failed is
# what the question asked for (a count of "3" that happens to equal some rendered quantity is a counting error).
ERROR_TAGS = {
    UNREADABLE_IMAGE: "the row's image could not be decoded (corrupt, truncated or empty file): no answer, scored 0",
    IMAGE_COUNT_MISMATCH: "the row's images do not match its image parts (a data bug): no answer, scored 0",
    "hallucinated_answer": "an unanswerable question got an answer",
    "false_abstention": "an answerable question got an abstention (said, empty, or under the threshold)",
    "counting": "wrong count (question_type counting)",
    "layout": "wrong position / layout answer (question_type layout)",
    "wrong_field": "the answer is another value rendered on the image (a distractor field), not the asked one",
    "ocr_miss": "close to a gold string (ANLS similarity >= 0.5) but not right: a misread",
    "other": "none of the above",
}
OCR_MISS_SIMILARITY = 0.5


def rendered_values(meta: dict) -> set[str]:
    """Normalised strings rendered on the image, from the synthetic set's meta (`fields` leaves and `texts`)."""
    values, stack = set(), [meta.get("fields"), meta.get("texts")]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
            values.add(normalize_answer(str(item)))
    values.discard("")
    return values


def image_error_tag(image_error: str) -> str:
    """The tag of a row left out of generation: a count mismatch, or an image that does not decode."""
    return IMAGE_COUNT_MISMATCH if image_error.startswith(IMAGE_COUNT_MISMATCH) else UNREADABLE_IMAGE


def tag_failure(record: dict, meta: dict | None = None) -> str:
    """The error-taxonomy tag (a key of ERROR_TAGS) of one failed record; meta = the row's parsed meta JSON."""
    if record.get("image_error"):
        return image_error_tag(record["image_error"])
    if not record["answerable"]:
        return "hallucinated_answer"
    if record["abstained"]:
        return "false_abstention"
    if record["question_type"] in ("counting", "layout"):
        return record["question_type"]
    answer, golds = normalize_answer(record["answer"]), {normalize_answer(g) for g in record["golds"]}
    if answer and answer not in golds and answer in rendered_values(meta or {}):
        return "wrong_field"
    if anls_score(record["answer"], record["golds"], threshold=OCR_MISS_SIMILARITY) > 0:
        return "ocr_miss"
    return "other"


def select_failures(records: list[dict], size: int) -> list[dict]:
    """The `size` worst failures: unreadable rows first (the data needs fixing before the numbers mean anything), then
    lowest final score, then most confident (confidently wrong first), then order."""
    failures = [r for r in records if r["final_score"] < 1.0]
    key = lambda r: (not r.get("image_error"), r["final_score"], -r["confidence"], r["index"])
    return sorted(failures, key=key)[:size]


def thumbnail_data_uri(image, max_side: int = 320) -> str:
    """A PIL image as a data: URI of a PNG thumbnail (the page needs no other file)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#111}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .6em}.cases{display:flex;flex-wrap:wrap;gap:1em}
.case{border:1px solid #ddd;border-radius:6px;padding:.6em;width:340px}.case img{max-width:320px;display:block}
.no-image{width:320px;height:120px;background:#eee;color:#555;display:flex;align-items:center;justify-content:center}
dt{font-weight:bold;float:left;clear:left;width:6.5em}dd{margin-left:7em}"""


def _case_html(record: dict, image_uri: str | None) -> str:
    rows = [
        ("id", record["id"]),
        ("question", record["question"]),
        ("gold", " | ".join(record["golds"])),
        ("prediction", record["final_answer"]),
        ("raw answer", record["answer"]),
        ("confidence", f"{record['confidence']:.4f}"),
        ("score", f"{record['final_score']:.3f}"),
        ("type", record["question_type"]),
        ("tag", record["error_tag"]),
    ]
    if record.get("image_error"):
        rows.append(("image error", record["image_error"]))
    image = (
        f'<img alt="{html.escape(record["id"])}" src="{image_uri}">'
        if image_uri
        else '<div class="no-image">no image</div>'
    )
    fields = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in rows)
    return (
        f'<div class="case" data-id="{html.escape(record["id"])}" data-tag="{record["error_tag"]}">{image}'
        f"<dl>{fields}</dl></div>"
    )


def render_gallery(selected: list[dict], images: dict, failure_counts: Counter, title: str) -> str:
    """HTML page: a summary table (all failures per tag, shown per tag) and one section per tag with its cases.

    selected: records with `error_tag` (from `select_failures`); images: id -> PIL image (absent ids show a
    "no image" placeholder; an unreadable row's `image_error` is listed with its fields).
    """
    shown = Counter(r["error_tag"] for r in selected)
    summary = "".join(
        f"<tr><td>{tag}</td><td>{html.escape(ERROR_TAGS[tag])}</td><td class='all'>{failure_counts.get(tag, 0)}</td>"
        f"<td class='shown'>{shown.get(tag, 0)}</td></tr>"
        for tag in ERROR_TAGS
        if failure_counts.get(tag, 0) or shown.get(tag, 0)
    )
    sections = []
    for tag in ERROR_TAGS:
        cases = [r for r in selected if r["error_tag"] == tag]
        if cases:
            body = "".join(
                _case_html(r, thumbnail_data_uri(images[r["id"]]) if r["id"] in images else None) for r in cases
            )
            sections.append(
                f'<section class="tag-group" id="tag-{tag}" data-tag="{tag}" data-count="{len(cases)}">'
                f"<h2>{tag} ({len(cases)})</h2><div class='cases'>{body}</div></section>"
            )
    total = sum(failure_counts.values())
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(selected)} of {total} failures shown (final score &lt; 1), worst first: lowest score, then highest "
        f"confidence.</p><table id='summary'><tr><th>tag</th><th>meaning</th><th>failures</th><th>shown</th></tr>"
        f"{summary}</table>{''.join(sections)}</body></html>"
    )


def plot_risk_coverage(confidences: list[float], scores: list[float], threshold: float, path: str, title: str):
    """Risk (1 - mean score of the answered) against coverage, questions ranked by confidence; the threshold's
    coverage as a dashed line. Needs at least 2 questions (the AUC does)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI / servers
    import matplotlib.pyplot as plt

    coverages, risks, _ = risk_coverage_curve(confidences, scores)
    auc = risk_coverage_auc(coverages, risks)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(coverages, risks, marker=".", label=f"risk-coverage (AUC {auc:.3f})")
    answered = sum(c >= threshold for c in confidences) / len(confidences)
    ax.axvline(answered, linestyle="--", color="grey", label=f"threshold {threshold:.3f}: coverage {answered:.2f}")
    ax.set(
        xlabel="coverage (share answered)", ylabel="risk (1 - mean score)", xlim=(0, 1), ylim=(0, 1.02), title=title
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return auc


def parse_meta(meta: str | None) -> dict:
    """A row's meta JSON string -> dict ({} for empty or non-dict JSON)."""
    value = json.loads(meta) if meta else {}
    return value if isinstance(value, dict) else {}
