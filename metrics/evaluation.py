"""Evaluate a Mini-LLaVA model (or a PEFT adapter on it) on one dataset split: batched greedy generation with answer
confidences, the dataset's metric, abstention and selective-prediction metrics, a failure gallery, a risk-coverage plot
and the model card.

    python run_eval.py --model outputs/offline/final --dataset data/synthetic --split test --threshold_split validation
    python run_eval.py eval_base.yaml eval_overlay.yaml --max_samples 10   (recipes compose as for run_sft.py)

Writes to --output_dir: eval_results.json, predictions.jsonl (one line per question), threshold_predictions.jsonl
(when fitted), failures.html, risk_coverage.png; and README.md (model card) into the model or adapter folder.

`metrics` in eval_results.json (scorers from metrics/<name>):
- <metric> (exact_match, anls, vqa_accuracy, relaxed_accuracy): the RAW generated answer scored against the golds,
  mean over ANSWERABLE rows: the field's definition, independent of the abstention threshold.
- <metric>_after_abstention: the same rows scored on the final answer (an abstention is then a wrong answer).
- <metric>_all_rows: raw answers over every row (an unanswerable row is right when the model said "unanswerable").
- abstain_precision/recall/f1, hallucination_rate, answerable_abstain_rate (over-abstention), abstain_rate: the final
  abstention decision (the model said the abstention answer or nothing, or its confidence < threshold); only when the
  split has unanswerable rows.
- model_abstain_precision/recall/f1, model_hallucination_rate, model_answerable_abstain_rate: the same for the
  model's own abstentions alone (no threshold): what training taught.
- auc, cov@r, phi@c: metrics/selective_vqa on (confidence, raw score) over all rows; phi@c needs a threshold split.
Confidence = exp(mean log-prob of the answer tokens, stop token excluded) from the raw logits (metrics/confidence.py).

A row whose image cannot be decoded (corrupt, truncated or empty file), or whose images do not match its image parts,
does not stop the run: it is named in a log line and scored as a failure: empty answer, confidence 0, score and final
score 0, no abstention (it made no decision: on an unanswerable row it lowers abstain recall and counts in
hallucination_rate), error_tag `unreadable_image` (or `image_count_mismatch`), the reason in `image_error`. It stays
in every denominator above and is shown first in the gallery; counts.unreadable_images (threshold_unreadable_images
for the threshold split) says how many.

Predictions are appended to the .jsonl files batch by batch (flushed), each line final when written (the threshold
split is generated first, so the threshold is known): a crash leaves every finished row on disk, and
eval_results.json, written last, is missing. A rerun with the same output_dir STARTS OVER: it removes the earlier
run's artefacts there first, so the folder never mixes two runs.
"""

import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from data_scripts.run_metadata import code_version
from data_scripts.schema import ABSTAIN_ANSWER, MANIFEST_NAME, load_dataset_dir, load_manifest
from metrics.confidence import fit_abstain_threshold
from metrics.gallery import IMAGE_COUNT_MISMATCH, image_error_tag, plot_risk_coverage, render_gallery, select_failures
from metrics.model_card import build_eval_results, push_model_card, write_model_card
from metrics.scoring import build_records, compute_metrics, count_rows, per_question_type, user_turn
from processing.image_loading import IMAGE_DECODE_ERRORS, load_images

LMMS_EVAL_SUFFIX = "\nAnswer the question using a single word or phrase."  # lmms-eval's default post_prompt
EVAL_DATASETS = {
    "docvqa": {"metric": "anls", "prompt_suffix": LMMS_EVAL_SUFFIX, "max_new_tokens": 128},  # as lmms-eval docvqa
    "textvqa": {"metric": "vqa_accuracy", "prompt_suffix": LMMS_EVAL_SUFFIX, "max_new_tokens": 32},  # lmms-eval: none
    "chartqa": {"metric": "relaxed_accuracy", "prompt_suffix": LMMS_EVAL_SUFFIX, "max_new_tokens": 16},  # lmms-eval
    "synthetic": {"metric": "exact_match", "prompt_suffix": "", "max_new_tokens": 32},  # trained without a suffix
    "synthetic_highres": {"metric": "exact_match", "prompt_suffix": "", "max_new_tokens": 32},  # its --variant highres
    "synthetic_contrastive": {"metric": "exact_match", "prompt_suffix": "", "max_new_tokens": 32},  # and contrastive
}
ARTEFACTS = (
    "eval_results.json",
    "predictions.jsonl",
    "threshold_predictions.jsonl",
    "failures.html",
    "risk_coverage.png",
)


@dataclass
class EvalArguments:
    model: str = field(default=None, metadata={"help": "model folder or Hub id (the base model when --adapter)"})
    dataset: str = field(default=None, metadata={"help": "dataset folder (save_to_disk + manifest) or Hub id"})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter folder applied on --model"})
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of --model"})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"one of {sorted(EVAL_DATASETS)}; default: the manifest's converter / rows' source"},
    )
    split: str = "test"
    max_samples: int | None = field(default=None, metadata={"help": "first N rows of each evaluated split"})
    batch_size: int = 8
    max_new_tokens: int | None = field(default=None, metadata={"help": "override the dataset's pinned value"})
    output_dir: str | None = field(default=None, metadata={"help": "default <adapter or model>/eval/<name>-<split>"})
    gallery_size: int = 24
    threshold: float | None = field(default=None, metadata={"help": "fixed abstention threshold (no fit)"})
    threshold_split: str | None = field(default=None, metadata={"help": "held-out split to fit the threshold on"})
    threshold_cost: float = field(default=1.0, metadata={"help": "cost of a wrong answer in the fit objective"})
    save_threshold: bool = field(default=False, metadata={"help": "write it to the folder's generation_config.json"})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo whose card gets the results"})
    device: str | None = None


def parse_args(argv=None) -> EvalArguments:
    """CLI flags, or YAML recipes composed left to right with flags overriding them (as run_sft.py)."""
    from recipes.arguments import parse_composed

    (args,) = parse_composed((EvalArguments,), list(sys.argv[1:] if argv is None else argv))
    for name in ("model", "dataset"):
        if not getattr(args, name):
            raise ValueError(f"--{name} is required (on the command line or in the YAML recipe).")
    return args


def resolve_dataset_name(name: str | None, dataset: str, splits) -> str:
    """--dataset_name, else the manifest's converter, else the rows' `source`; must be a key of EVAL_DATASETS."""
    if name is None and os.path.exists(os.path.join(dataset, MANIFEST_NAME)):
        name = load_manifest(dataset).get("converter")
    if name is None:
        name = next((ds.select_columns("source")[0]["source"] for ds in splits.values() if len(ds)), None)
    if name not in EVAL_DATASETS:
        raise ValueError(
            f"unknown dataset name {name!r} for {dataset!r}: pass --dataset_name, one of {sorted(EVAL_DATASETS)}."
        )
    return name


def select_split(splits, split: str, max_samples: int | None):
    if split not in splits:
        raise ValueError(f"split {split!r} is not in the dataset; it has {sorted(splits)}.")
    ds = splits[split]
    ds = ds.select(range(min(max_samples, len(ds)))) if max_samples is not None else ds
    if len(ds) == 0:
        raise ValueError(f"split {split!r} has no rows to evaluate (max_samples={max_samples}).")
    for row_id, golds in zip(ds["id"], ds["answers"]):
        if not golds or not all(isinstance(g, str) for g in golds):
            raise ValueError(
                f"row {row_id!r} of split {split!r} has no gold answers ({golds!r}): evaluate a split "
                "with golds (DocVQA's test split has none; use validation)."
            )
    return ds


def load_model(args: EvalArguments):
    """(model, processor, generation_config) via the AutoClasses + remote code; PEFT on top for an adapter. The
    generation config (stop tokens, saved abstain_threshold) is the adapter folder's when it has one."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

    kwargs = {"trust_remote_code": True, "revision": args.model_revision}
    model = AutoModelForImageTextToText.from_pretrained(args.model, **kwargs)
    generation_config = model.generation_config
    processor_source = args.model
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
        if os.path.exists(os.path.join(args.adapter, "processor_config.json")):
            processor_source = args.adapter  # training saves the processor next to the adapter
        if os.path.exists(os.path.join(args.adapter, "generation_config.json")):
            generation_config = GenerationConfig.from_pretrained(args.adapter)
    processor = AutoProcessor.from_pretrained(processor_source, **kwargs)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.eval().to(device), processor, generation_config


def undecoded(ds):
    """The split read as Arrow: `undecoded(ds)[a:b].to_pydict()` gives the columns of rows a..b-1 with images left as
    {bytes, path} for `read_images` (casting the column instead would rewrite the whole split, images included)."""
    return ds.with_format("arrow")


def read_images(values, expected: int | None = None) -> tuple[list | None, str | None]:
    """(PIL images, None) for one row's undecoded images, or (None, why) when one cannot be decoded or (`expected`:
    the user turn's image parts) their number does not match: the processor would refuse the whole batch."""
    try:
        if values is None or any(v is None for v in values) or not (values or expected):
            raise ValueError(f"the row has no image ({values!r})")
        # The collator's decoding (open + full load), so a truncated file raises here and not inside the processor.
        images = load_images(values)
    except IMAGE_DECODE_ERRORS as error:  # PIL names the in-memory file by address: dropped, so reruns match
        return None, f"{type(error).__name__}: " + re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))
    if expected is not None and len(images) != expected:
        return None, f"{IMAGE_COUNT_MISMATCH}: {expected} image part(s) but {len(images)} image(s)"
    return images, None


@torch.no_grad()
def generate_batches(model, processor, ds, suffix: str, max_new_tokens: int, batch_size: int, stop_ids: list[int]):
    """Yields (rows, results) per greedy, left-padded batch with KV cache: rows = `ds[a:b]`'s columns, results = one
    {answer, confidence, num_tokens, image_error} per row. A row whose image does not decode is left out of the batch
    (empty answer, confidence 0, the reason in image_error) and named in the log."""
    table = undecoded(ds)
    with tqdm(total=len(ds), unit="sample", desc="generate") as bar:
        for first in range(0, len(ds), batch_size):
            rows = table[first : first + batch_size].to_pydict()
            results = [{"answer": "", "confidence": 0.0, "num_tokens": 0, "image_error": None} for _ in rows["id"]]
            keep, images, texts = [], [], []
            for i, (row_id, values, messages) in enumerate(zip(rows["id"], rows["images"], rows["messages"])):
                turn = user_turn(messages, suffix)
                parts = sum(part.get("type") == "image" for part in turn["content"])
                decoded, results[i]["image_error"] = read_images(values, expected=parts)
                if decoded is None:
                    error = results[i]["image_error"]
                    tag = image_error_tag(error).replace("_", " ")
                    tqdm.write(f"[eval] row {row_id!r}: {tag}, scored as a failure ({error})")
                    continue
                keep.append(i)
                images.append(decoded)
                texts.append(processor.apply_chat_template([turn], add_generation_prompt=True))
            if keep:
                inputs = processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")
                inputs = inputs.to(model.device)
                out = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    use_cache=True,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
                # The one answer -> confidence implementation, shipped with the model's processor (the Space uses it
                # too). The threshold is applied in build_records.
                prompt_length = inputs["input_ids"].shape[1]
                answers = processor.post_process_answers(out, prompt_length, threshold=0.0, stop_token_ids=stop_ids)
                for i, result in zip(keep, answers):
                    results[i].update({key: result[key] for key in ("answer", "confidence", "num_tokens")})
            bar.update(len(results))
            yield rows, results


def predict(batches, metric: str, threshold: float, path: str) -> tuple[list[dict], float]:
    """(records, seconds): build_records per batch, appended to `path` and flushed, so a crash leaves the rows done."""
    records, start = [], time.perf_counter()
    with open(path, "w") as f:
        for rows, results in batches:
            batch = build_records(rows, results, metric, threshold, offset=len(records))
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in batch)
            f.flush()
            records += batch
    return records, time.perf_counter() - start


def save_threshold(folder: str, threshold: float, generation_config) -> str:
    """abstain_threshold + abstain_answer into folder/generation_config.json (the demo reads them from there)."""
    from transformers import GenerationConfig

    path = os.path.join(folder, "generation_config.json")
    config = GenerationConfig.from_pretrained(folder) if os.path.exists(path) else generation_config
    config.abstain_threshold, config.abstain_answer = float(threshold), ABSTAIN_ANSWER
    config.save_pretrained(folder)
    return path


def default_output_dir(target: str, name: str, split: str) -> str:
    if os.path.isdir(target):
        return os.path.join(target, "eval", f"{name}-{split}")
    return os.path.join("eval_outputs", target.replace("/", "__"), f"{name}-{split}")  # a Hub id: under the cwd


def check_threshold_args(args: EvalArguments, target: str) -> None:
    if args.threshold is not None and args.threshold_split:
        raise ValueError("give --threshold (fixed) or --threshold_split (fitted), not both.")
    if args.threshold_split == args.split:
        raise ValueError(f"--threshold_split {args.threshold_split!r} is the evaluated split: fit on a held-out one.")
    if args.save_threshold and not (os.path.isdir(target) and (args.threshold_split or args.threshold is not None)):
        raise ValueError(
            f"--save_threshold needs a local model/adapter folder (got {target!r}) and --threshold_split "
            "or --threshold."
        )


def choose_threshold(args: EvalArguments, gen, fit_ds, metric: str, generation_config, output_dir: str):
    """(threshold, source, held-out records or None, fit summary or None): fitted, given, saved in the model, or 0."""
    if fit_ds is not None:
        path = os.path.join(output_dir, "threshold_predictions.jsonl")
        fit_records, _ = predict(gen(fit_ds), metric, 0.0, path)
        column = lambda key: [r[key] for r in fit_records]
        threshold, reward = fit_abstain_threshold(
            column("answer"), column("confidence"), column("answerable"), column("score"), cost=args.threshold_cost
        )
        summary = {
            "split": args.threshold_split,
            "rows": len(fit_ds),
            "cost": args.threshold_cost,
            "mean_reward": reward,
            "objective": "max mean reward: an answer earns its score (-cost when 0), an abstention 1 on an "
            "unanswerable row, 0 on an answerable one; ties -> lowest threshold",
        }
        return threshold, f"fitted on {args.threshold_split}", fit_records, summary
    if args.threshold is not None:
        return args.threshold, "argument", None, None
    saved = getattr(generation_config, "abstain_threshold", None)
    return (float(saved), "model generation_config", None, None) if saved is not None else (0.0, "none", None, None)


def write_gallery_and_plot(records, ds, threshold: float, gallery_size: int, output_dir: str, title: str):
    """failures.html (the worst `gallery_size` failures) and risk_coverage.png; returns (shown, failure counts)."""
    selected, table = select_failures(records, gallery_size), undecoded(ds)
    decoded = {
        r["id"]: read_images(table[r["index"]].column("images")[0].as_py())[0]
        for r in selected
        if r["image_error"] is None
    }
    images = {row_id: found[0] for row_id, found in decoded.items() if found}
    failure_counts = Counter(r["error_tag"] for r in records if r["error_tag"])
    with open(os.path.join(output_dir, "failures.html"), "w") as f:
        f.write(render_gallery(selected, images, failure_counts, f"Failures: {title}"))
    if len(records) >= 2:
        plot_risk_coverage(
            [r["confidence"] for r in records],
            [r["score"] for r in records],
            threshold,
            os.path.join(output_dir, "risk_coverage.png"),
            title,
        )
    return selected, failure_counts


def run_eval(args: EvalArguments) -> dict:
    """The whole evaluation; returns the eval_results.json content."""
    splits = load_dataset_dir(args.dataset)
    name = resolve_dataset_name(args.dataset_name, args.dataset, splits)
    spec, target = EVAL_DATASETS[name], args.adapter or args.model
    check_threshold_args(args, target)
    ds = select_split(splits, args.split, args.max_samples)
    fit_ds = select_split(splits, args.threshold_split, args.max_samples) if args.threshold_split else None
    output_dir = args.output_dir or default_output_dir(target, name, args.split)
    os.makedirs(output_dir, exist_ok=True)

    model, processor, generation_config = load_model(args)
    eos = generation_config.eos_token_id
    stop_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    max_new_tokens = args.max_new_tokens or spec["max_new_tokens"]
    gen = lambda rows: generate_batches(
        model, processor, rows, spec["prompt_suffix"], max_new_tokens, args.batch_size, stop_ids
    )
    clear_artefacts(output_dir)
    threshold, source, fit_records, threshold_fit = choose_threshold(
        args, gen, fit_ds, spec["metric"], generation_config, output_dir
    )
    predictions = os.path.join(output_dir, "predictions.jsonl")
    records, seconds = predict(gen(ds), spec["metric"], threshold, predictions)
    metrics = compute_metrics(records, spec["metric"], fit_records)
    if args.save_threshold:
        threshold_fit = {**(threshold_fit or {}), "saved_to": save_threshold(target, threshold, generation_config)}
    title = f"{os.path.basename(os.path.normpath(target))} on {name}/{args.split}"
    selected, failure_counts = write_gallery_and_plot(records, ds, threshold, args.gallery_size, output_dir, title)

    manifest = load_manifest(args.dataset) if os.path.exists(os.path.join(args.dataset, MANIFEST_NAME)) else {}
    results = {
        "model": args.model,
        "model_revision": args.model_revision,
        "adapter": args.adapter,
        "model_commit_hash": getattr(model.config, "_commit_hash", None),
        "dataset": args.dataset,
        "dataset_name": name,
        "split": args.split,
        "dataset_fingerprint": manifest.get("fingerprint") or ds._fingerprint,
        "git_commit": code_version(),
        "metric": spec["metric"],
        "prompt_suffix": spec["prompt_suffix"],
        "generation": generation_settings(model, spec, max_new_tokens, args.batch_size, stop_ids),
        "threshold": threshold,
        "threshold_source": source,
        "threshold_fit": threshold_fit,
        "abstain_answer": ABSTAIN_ANSWER,
        "counts": count_rows(records, failure_counts, len(selected), fit_records),
        "metrics": metrics,
        "per_question_type": per_question_type(records, spec["metric"]),
        "failure_tags": dict(sorted(failure_counts.items())),
        "samples_per_second": len(records) / seconds,
        "args": asdict(args),
    }
    with open(os.path.join(output_dir, "eval_results.json"), "w") as f:
        json.dump(results, f, indent=2)

    write_card(args, target, output_dir, results)
    print(
        f"[eval] {name}/{args.split}: {len(records)} rows, {results['samples_per_second']:.2f} samples/s; "
        f"{spec['metric']} {metrics[spec['metric']]}; threshold {threshold:.4f} ({source}); "
        f"{results['counts']['unreadable_images']} unreadable images (scored as failures); -> {output_dir}"
    )
    return results


def clear_artefacts(output_dir: str) -> None:
    """Start over: a crash of this run must not leave the last run's results beside it."""
    for artefact in ARTEFACTS:
        if os.path.exists(os.path.join(output_dir, artefact)):
            os.remove(os.path.join(output_dir, artefact))


def generation_settings(model, spec: dict, max_new_tokens: int, batch_size: int, stop_ids: list[int]) -> dict:
    """How the answers were generated, as eval_results.json records it."""
    return {
        "do_sample": False,
        "num_beams": 1,
        "use_cache": True,
        "padding_side": "left",
        "max_new_tokens": max_new_tokens,
        "max_new_tokens_pinned": spec["max_new_tokens"],
        "batch_size": batch_size,
        "stop_token_ids": stop_ids,
        "device": str(model.device),
        "dtype": str(model.dtype),
        "confidence": "exp(mean raw-logit log-prob of the answer tokens)",
    }


def write_card(args: EvalArguments, target: str, output_dir: str, results: dict) -> None:
    """The results into the model card (the model folder's, else one in output_dir); pushed when asked."""
    name, threshold, source = results["dataset_name"], results["threshold"], results["threshold_source"]
    dataset_id = name if os.path.exists(args.dataset) else args.dataset  # a local folder has no Hub id to cite
    card = write_model_card(
        target if os.path.isdir(target) else output_dir,
        build_eval_results(results["metrics"], dataset_id, name, args.split),
        model_name=os.path.basename(os.path.normpath(target)),
        note=f"`run_eval.py` at git {results['git_commit']}; dataset fingerprint "
        f"{results['dataset_fingerprint'][:16]}; abstention threshold {threshold:.4f} ({source}).",
    )
    if args.push_to_hub:
        push_model_card(card, args.push_to_hub)


def main(argv=None) -> dict:
    """`run_eval.py ARGV` as a function."""
    return run_eval(parse_args(argv))
