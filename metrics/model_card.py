"""Evaluation results into a model card: model-index `EvalResult`s in the README.md metadata (huggingface_hub), a
results table in the body, and pushing the card to a Hub repo. A re-run replaces its own results, keeps the others.
"""

import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TASK_TYPE = "visual-question-answering"
SECTION_START, SECTION_END = "<!-- run_eval results: start -->", "<!-- run_eval results: end -->"
_NEW_CARD = "---\n{{ card_data }}\n---\n\n# {{ model_name }}\n\nA Mini-LLaVA vision-language model.\n"


def build_eval_results(metrics: dict, dataset_type: str, dataset_name: str, split: str) -> list[EvalResult]:
    """One EvalResult per scalar metric (bools and nested values are left out)."""
    return [
        EvalResult(
            task_type=TASK_TYPE,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=name,
            metric_name=name,
            metric_value=float(value),
        )
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


def _key(result: EvalResult) -> tuple:
    return (
        result.task_type,
        result.dataset_type,
        result.dataset_name,
        result.dataset_config,
        result.dataset_split,
        result.metric_type,
    )


def merge_eval_results(old: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult]:
    """Old results whose (task, dataset, config, split, metric) is not re-measured, then the new ones."""
    new_keys = {_key(r) for r in new}
    return [r for r in old or [] if _key(r) not in new_keys] + list(new)


def results_table(results: list[EvalResult]) -> str:
    lines = ["| dataset | split | metric | value |", "|---|---|---|---|"]
    lines += [f"| {r.dataset_name} | {r.dataset_split} | {r.metric_type} | {r.metric_value:.4f} |" for r in results]
    return "\n".join(lines)


def drop_local_base_models(data: ModelCardData) -> None:
    """`base_model` names Hub repos. PEFT copies its base's `name_or_path` into the card (`base_model` and a
    `base_model:adapter:<name>` tag), an absolute path of the training machine for a local base: drop those (they leak
    the local layout and are no Hub id); Hub ids and relative names stay as given."""
    local = lambda name: isinstance(name, str) and os.path.isabs(name)
    base = getattr(data, "base_model", None)
    if isinstance(base, list):
        data.base_model = [name for name in base if not local(name)] or None
    elif local(base):
        data.base_model = None
    if data.tags:
        data.tags = [t for t in data.tags if not (t.startswith("base_model:") and local(t.split(":", 2)[-1]))]


def write_model_card(folder: str, results: list[EvalResult], model_name: str, note: str = "") -> Path:
    """Create or update folder/README.md: merged model-index metadata and the results section; returns its path."""
    path = Path(folder) / "README.md"
    if path.exists():
        card = ModelCard.load(path)
    else:
        data = ModelCardData(
            model_name=model_name,
            library_name="transformers",
            pipeline_tag="image-text-to-text",
            tags=["mini-llava", "vision-language"],
        )
        card = ModelCard.from_template(data, template_str=_NEW_CARD, model_name=model_name)
    card.data.model_name = card.data.model_name or model_name  # model-index needs a name
    drop_local_base_models(card.data)
    card.data.eval_results = merge_eval_results(card.data.eval_results, results)
    section = f"{SECTION_START}\n## Evaluation\n\n{note}\n\n{results_table(card.data.eval_results)}\n{SECTION_END}"
    text = card.text
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + section + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    card.text = text
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(path)
    return path


def push_model_card(card_path: Path, repo_id: str, token: str | None = None) -> str:
    """Upload the written card as README.md of the (existing) Hub repo `repo_id`; returns the commit URL."""
    card = ModelCard.load(card_path)
    return card.push_to_hub(repo_id, token=token, commit_message="Update evaluation results (run_eval.py)")
