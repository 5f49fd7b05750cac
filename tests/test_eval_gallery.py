"""Failure taxonomy, the HTML gallery (parsed back), the risk-coverage plot and the model card (read back with
huggingface_hub; the Hub upload is mocked)."""

import base64
import io
from collections import Counter
from html.parser import HTMLParser

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from metrics.gallery import plot_risk_coverage, render_gallery, select_failures, tag_failure
from metrics.model_card import build_eval_results, push_model_card, write_model_card

META = {"fields": {"invoice_number": "INV-104", "total": "$12.50", "items": [{"qty": "3"}]}, "texts": ["ACME Ltd"]}


def _record(index, qtype, answer, golds, final_score, confidence, answerable=True, abstained=False):
    return {
        "index": index,
        "id": f"r{index}",
        "question_type": qtype,
        "answerable": answerable,
        "question": f"question {index} <b>?",
        "golds": golds,
        "answer": answer,
        "answer_tokens": 2,
        "confidence": confidence,
        "abstained": abstained,
        "final_answer": "unanswerable" if abstained else answer,
        "score": final_score,
        "final_score": final_score,
        "error_tag": None,
    }


@pytest.fixture
def records():
    rows = [
        _record(0, "unanswerable", "INV-104", ["unanswerable"], 0.0, 0.9, answerable=False),
        _record(1, "extraction", "", ["INV-104"], 0.0, 0.1, abstained=True),
        _record(2, "counting", "3", ["4"], 0.0, 0.8),
        _record(3, "extraction", "$12.50", ["INV-104"], 0.0, 0.7),  # another rendered field
        _record(4, "extraction", "INV-1O4", ["INV-104"], 0.0, 0.6),  # one misread character
        _record(5, "key_value", "banana", ["INV-104"], 0.0, 0.95),
        _record(6, "layout", "left", ["right"], 0.0, 0.5),
        _record(7, "extraction", "INV-104", ["INV-104"], 1.0, 0.99),  # right: not a failure
    ]
    for r in rows:
        if r["final_score"] < 1:
            r["error_tag"] = tag_failure(r, META)
    return rows


def test_error_taxonomy(records):
    assert [r["error_tag"] for r in records] == [
        "hallucinated_answer",
        "false_abstention",
        "counting",
        "wrong_field",
        "ocr_miss",
        "other",
        "layout",
        None,
    ]
    # A rendered value equal to the gold is not a distractor; without meta there are no distractors.
    assert tag_failure(_record(9, "extraction", "ACME Ltd", ["ACME Ltd", "x"], 0.0, 0.5), META) != "wrong_field"
    assert tag_failure(_record(9, "extraction", "$12.50", ["INV-104"], 0.0, 0.5), None) == "other"


def test_select_failures_worst_first(records):
    # All failures score 0: most confident first (0.95, 0.9, 0.8, 0.7); the right answer (0.99) is never selected.
    assert [r["id"] for r in select_failures(records, 4)] == ["r5", "r0", "r2", "r3"]
    assert len(select_failures(records, 100)) == 7


class _GalleryParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.cases, self.images, self.summary_rows, self._section = {}, [], 0, 0, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs["data-tag"]
            self.sections[self._section] = {"count": int(attrs["data-count"]), "ids": []}
        elif tag == "div" and attrs.get("class") == "case":
            self.cases.append(attrs["data-id"])
            self.sections[self._section]["ids"].append(attrs["data-id"])
            assert attrs["data-tag"] == self._section
        elif tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
            Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1]))).verify()
            self.images += 1
        elif tag == "td" and attrs.get("class") == "all":
            self.summary_rows += 1


def test_gallery_html_has_one_entry_per_selected_failure_grouped_by_tag(records):
    selected = select_failures(records, 5)
    images = {r["id"]: Image.new("RGB", (640, 480), "white") for r in selected[:4]}  # one without an image
    counts = Counter(r["error_tag"] for r in records if r["error_tag"])
    page = render_gallery(selected, images, counts, "Failures: <tiny>")
    parser = _GalleryParser()
    parser.feed(page)
    assert sorted(parser.cases) == sorted(r["id"] for r in selected)
    assert parser.images == 4
    expected = Counter(r["error_tag"] for r in selected)
    assert {tag: s["count"] for tag, s in parser.sections.items()} == dict(expected)
    assert {tag: len(s["ids"]) for tag, s in parser.sections.items()} == dict(expected)
    assert parser.summary_rows == len(counts)  # every tag with failures, shown or not
    assert "question 0 &lt;b&gt;?" in page and "<b>?" not in page  # escaped
    assert "Failures: &lt;tiny&gt;" in page


def test_risk_coverage_plot_writes_png(tmp_path):
    path = tmp_path / "rc.png"
    auc = plot_risk_coverage([0.9, 0.8, 0.7, 0.6], [1.0, 1.0, 0.0, 1.0], 0.75, str(path), "toy")
    # Risks after each question: 0, 0, 1/3, 1/4 at coverages 1/4..1 -> trapezoids 0 + 1/24 + 7/96.
    assert auc == pytest.approx(1 / 24 + 7 / 96)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _values(card) -> dict:
    return {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}


def test_model_card_written_merged_and_read_back(tmp_path):
    first = build_eval_results(
        {"exact_match": 0.5, "abstain_f1": 0.25, "flag": True, "nested": {}}, "synthetic", "synthetic", "test"
    )
    assert [r.metric_type for r in first] == ["exact_match", "abstain_f1"]  # scalars only
    path = write_model_card(str(tmp_path), first, model_name="tiny")
    card = ModelCard.load(path)
    assert card.data.model_name == "tiny"
    assert _values(card) == {("synthetic", "test", "exact_match"): 0.5, ("synthetic", "test", "abstain_f1"): 0.25}
    # Re-running one metric replaces it; another split is added; the user's own text survives.
    path.write_text(path.read_text().replace("A Mini-LLaVA vision-language model.", "My notes."))
    write_model_card(
        str(tmp_path),
        build_eval_results({"exact_match": 0.75}, "synthetic", "synthetic", "test")
        + build_eval_results({"exact_match": 0.1}, "synthetic", "synthetic", "validation"),
        "tiny",
    )
    card = ModelCard.load(path)
    assert _values(card) == {
        ("synthetic", "test", "exact_match"): 0.75,
        ("synthetic", "test", "abstain_f1"): 0.25,
        ("synthetic", "validation", "exact_match"): 0.1,
    }
    assert "My notes." in card.text and card.text.count("## Evaluation") == 1
    assert "| synthetic | validation | exact_match | 0.1000 |" in card.text


def test_push_model_card_uploads_the_card(tmp_path, monkeypatch):
    import huggingface_hub.repocard as repocard

    uploads = []

    def fake_upload_file(*, path_or_fileobj, path_in_repo, repo_id, **kwargs):
        with open(path_or_fileobj) as f:
            uploads.append({"text": f.read(), "path": path_in_repo, "repo": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(repocard, "upload_file", fake_upload_file)
    monkeypatch.setattr(ModelCard, "validate", lambda self, repo_type=None: None)  # a Hub API call
    path = write_model_card(
        str(tmp_path), build_eval_results({"anls": 0.625}, "lmms-lab/DocVQA", "docvqa", "validation"), "tiny"
    )
    url = push_model_card(path, "me/tiny-minillava")
    assert url == "https://huggingface.co/me/tiny-minillava/commit/0"
    assert [(u["repo"], u["path"]) for u in uploads] == [("me/tiny-minillava", "README.md")]
    pushed = ModelCard(uploads[0]["text"])
    assert _values(pushed) == {("docvqa", "validation", "anls"): 0.625}
    assert pushed.data.eval_results[0].dataset_type == "lmms-lab/DocVQA"
