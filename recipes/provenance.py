"""Provenance that travels with the model: every saved model folder (each checkpoint, the final output, `merged/`)
holds the resolved recipe (recipe.yaml), run_info.json (code version, data fingerprints, packages, machine, seed, the
train plan's per-module counts, tokens seen) and train_results.json, and a model card written with huggingface_hub's
card tools from those records (`write_training_card`, also a CLI to re-point a copied folder's card)."""

import argparse
import json
import math
import os
import sys

import yaml
from huggingface_hub import ModelCard, ModelCardData
from transformers import TrainerCallback

from data_scripts.run_metadata import git_state, machine_info, package_versions
from metrics.model_card import SECTION_END, SECTION_START
from modeling_minillava.modeling_minillava import portable_name

from .arguments import resolved_recipe

RECIPE_FILE, RUN_INFO_FILE, RESULTS_FILE = "recipe.yaml", "run_info.json", "train_results.json"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_portable_names(model) -> None:
    """The names `save_pretrained` copies into config.json (the sub-configs' `_name_or_path`: the backbones), into
    adapter_config.json and into PEFT's and TRL's model cards (`base_model`: the model's `name_or_path`). PEFT
    (AutoPeftModelForCausalLM) resolves a local base name against the cwd, so an adapter loads from the directory the
    run was launched from, or from the folder holding its base."""
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config.name_or_path = portable_name(config.name_or_path)
    model.name_or_path = model.config.name_or_path


def train_plan_counts(model) -> dict:
    """{top-level module: {trainable, total}} parameters (tied weights counted once, PEFT's frozen originals of
    `modules_to_save` left out, ZeRO-3 shards at their full size)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = {**dict(base.model.named_children()), "lm_head": base.lm_head}
    counts, seen = {}, set()
    for name, module in modules.items():
        params = [p for n, p in module.named_parameters() if "original_module." not in n and id(p) not in seen]
        seen.update(id(p) for p in params)
        numel = [getattr(p, "ds_numel", p.numel()) for p in params]
        counts[name] = {"trainable": sum(n for n, p in zip(numel, params) if p.requires_grad), "total": sum(numel)}
    return counts


def describe_train_plan(counts: dict) -> str:
    """One line per top-level module: TRAINABLE / PARTIAL / FROZEN / TIED with parameter counts."""
    lines = []
    for name, c in counts.items():
        trainable, total = c["trainable"], c["total"]
        state = "TRAINABLE" if trainable == total and total else "PARTIAL" if trainable else "FROZEN"
        state = "TIED" if not total else state  # lm_head sharing the input embeddings, counted there
        lines.append(f"  {name:<24} {state:<10} {c['trainable']:>14,} / {c['total']:>14,}")
    return "Train plan:\n" + "\n".join(lines)


class Provenance(TrainerCallback):
    """The run's records, made once at the start and written into every checkpoint as it is saved."""

    def __init__(self, model_args, data_args, training_args):
        self.model_args, self.data_args = model_args, data_args
        self.recipe = resolved_recipe(model_args, data_args, training_args)
        self.run_info, self.trainer = {}, None

    def attach(self, trainer, datasets: dict, train_rows: int) -> None:
        commit, dirty = git_state(REPO)
        args, margs = trainer.args, self.model_args
        self.trainer, trainer.provenance = trainer, self
        self.run_info = {
            "command": sys.argv,
            "git_commit": commit,
            "git_dirty": dirty,
            "base_models": base_models(margs),
            "init_from": portable_name(margs.init_from) if margs.init_from else None,
            "datasets": [
                {
                    "path": portable_name(cfg.path),
                    "split": cfg.split,
                    "fraction": cfg.fraction,
                    "fingerprint": datasets.get(cfg.path),
                }
                for cfg in self.data_args.datasets
            ],
            "train_rows": train_rows,
            "seed": args.seed,
            "license": margs.license,
            "lora": bool(margs.lora_r),
            "train_plan": train_plan_counts(trainer.model),
            "packages": package_versions(),
            "machine": machine_info(),
            "world_size": args.world_size,
        }

    def describe_train_plan(self) -> str:
        return describe_train_plan(self.run_info["train_plan"])

    def records(self) -> dict:
        """run_info with what the run has done so far (tokens seen, steps)."""
        state = self.trainer.state
        return {**self.run_info, "tokens_seen": self.trainer._total_train_tokens, "global_step": state.global_step}

    def write(self, folder: str, results: dict | None = None) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, RECIPE_FILE), "w") as f:
            yaml.safe_dump(self.recipe, f, sort_keys=False)
        with open(os.path.join(folder, RUN_INFO_FILE), "w") as f:
            json.dump(self.records(), f, indent=2, default=str)
        if results is not None:
            with open(os.path.join(folder, RESULTS_FILE), "w") as f:
                json.dump(results, f, indent=2)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            self.write(checkpoint)
            write_training_card(checkpoint)


def base_models(model_args) -> dict:
    """{"vision": id, "llm": id}: the recipe's backbones, or the ones `init_from` was trained from (its run_info)."""
    if model_args.init_from:
        path = os.path.join(model_args.init_from, RUN_INFO_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)["base_models"]
        return {"vision": None, "llm": None}  # a model from elsewhere: its card names its own base
    return {"vision": portable_name(model_args.vision_name), "llm": portable_name(model_args.llm_name)}


def summarize(trainer, result, resumed_from: str | None = None) -> dict:
    """The whole run's losses, token count and collator stats (continued across resumes); runtime and throughput
    are this process's (since `resumed_from`, when set)."""
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return {
        "first_loss": losses[0][1] if losses else math.nan,
        "last_loss": losses[-1][1] if losses else math.nan,
        "losses": losses,
        "global_step": trainer.state.global_step,
        "train_runtime": result.metrics.get("train_runtime"),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_rows": trainer.provenance.run_info["train_rows"],
        "num_tokens": trainer._total_train_tokens,  # TRL's count, as logged
        "collator": dict(trainer.guard.collator.stats),
        "resumed_from": resumed_from,
    }


def save_artefacts(trainer, result, resumed_from: str | None = None) -> dict:
    """After `trainer.save_model()`: the processor, records and card into output_dir, and for LoRA runs a merged
    whole model (+ the same records) into output_dir/merged. Returns the run summary (train_results.json)."""
    args, provenance = trainer.args, trainer.provenance
    summary = summarize(trainer, result, resumed_from)
    if not trainer.is_world_process_zero():
        return summary
    folders = [args.output_dir]
    model_args = provenance.model_args
    if model_args.lora_r and not (model_args.load_in_4bit or model_args.load_in_8bit):
        merged = os.path.join(args.output_dir, "merged")  # a whole model for run_eval, the demo and the Hub
        trainer.model.merge_and_unload().save_pretrained(merged)
        folders.append(merged)
    for folder in folders:
        trainer.processing_class.save_pretrained(folder)
        provenance.write(folder, summary)
        write_training_card(folder, model_id=args.hub_model_id)
    print(f"Artefacts in {os.path.abspath(args.output_dir)}: {json.dumps(summary)}")
    return summary


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A [Mini-LLaVA](https://github.com/mini-llava/mini-llava) vision-language model for documents and UI screenshots: the
vision tower `{{ vision }}` -> a `{{ projector }}` projector -> the LLM `{{ llm }}`. It answers questions about an
image and says "unanswerable" when the answer is not on it.

## Usage

```python
{{ snippet }}
```

## Training

{{ training }}
"""

SNIPPET = """from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor

model_id = "{model_id}"
model = AutoModelForImageTextToText.from_pretrained(model_id, trust_remote_code=True, dtype="auto")
processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)

image = Image.new("RGB", (640, 240), "white")  # or Image.open("screenshot.png"), or a path/URL in the message
ImageDraw.Draw(image).text((20, 100), "Invoice total: 42.00 EUR", fill="black")
question = {{"type": "text", "text": "What is the total?"}}
messages = [{{"role": "user", "content": [{{"type": "image", "image": image}}, question]}}]
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
).to(model.device)
out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
print(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))"""


def read_records(folder: str) -> tuple[dict, dict, dict]:
    """(recipe, run_info, train_results) of a saved model folder; {} for a missing file."""
    out = []
    for name in (RECIPE_FILE, RUN_INFO_FILE, RESULTS_FILE):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            out.append({})
            continue
        with open(path) as f:
            out.append(yaml.safe_load(f) if name.endswith(".yaml") else json.load(f))
    return tuple(out)


def training_section(recipe: dict, info: dict, results: dict) -> str:
    plan = describe_train_plan(info.get("train_plan", {})).splitlines()[1:]
    data = "\n".join(
        f"- `{d['path']}` split `{d['split']}`"
        + (f", fraction {d['fraction']}" if d.get("fraction") else "")
        + (f" (fingerprint `{d['fingerprint'][:16]}`)" if d.get("fingerprint") else "")
        for d in info.get("datasets", [])
    )
    versions = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items() if v)
    dirty = " (with uncommitted changes)" if info.get("git_dirty") else ""
    lines = [
        f"Trained with TRL's `SFTTrainer` by `run_sft.py` at git `{info.get('git_commit')}`{dirty}"
        + (f", starting from `{info['init_from']}`" if info.get("init_from") else "")
        + f"; seed {info.get('seed')}, {info.get('world_size', 1)} process(es). The resolved recipe is `recipe.yaml`,",
        "the full record `run_info.json` and `train_results.json` in this folder.",
        "",
        f"Data ({info.get('train_rows')} training rows):",
        data,
        "",
        f"Steps {results.get('global_step', info.get('global_step'))}, tokens seen {info.get('tokens_seen')}, "
        f"loss {results.get('first_loss', float('nan')):.4f} -> {results.get('last_loss', float('nan')):.4f}.",
        "",
        "What trained (trainable / total parameters):",
        "```",
        *plan,
        "```",
        "",
        f"Software: {versions}.",
    ]
    return "\n".join(lines)


def projector_type(folder: str, recipe: dict) -> str:
    """The projector named by the folder's config.json (a whole model), else by the recipe (an adapter folder)."""
    path = os.path.join(folder, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f).get("projector_type", "mlp2x_gelu")
    return recipe.get("projector_type", "mlp2x_gelu")


def card_base_model(info: dict):
    """The card's `base_model`: both backbones; the model `init_from` names when its backbones are unknown (a
    folder not written by run_sft.py); a single name as a string, as the Hub writes it."""
    bases = [b for b in (info.get("base_models", {}).get(k) for k in ("vision", "llm")) if b]
    bases = bases or [info["init_from"]] if info.get("init_from") else bases
    return bases[0] if len(bases) == 1 else bases or None


def write_training_card(folder: str, model_id: str | None = None) -> str:
    """folder/README.md from the folder's records, for the model at `model_id` (a Hub id; default: the folder as a
    path from here). Evaluation results already in the card (run_eval's model-index and section) are kept."""
    recipe, info, results = read_records(folder)
    if not info:
        raise FileNotFoundError(f"{folder} has no {RUN_INFO_FILE}: it was not saved by run_sft.py.")
    model_id = model_id or portable_name(os.path.abspath(folder))
    bases = info.get("base_models", {})
    path = os.path.join(folder, "README.md")
    old = ModelCard.load(path) if os.path.isfile(path) else None
    eval_section = ""
    if old is not None and SECTION_START in old.text and SECTION_END in old.text:
        eval_section = SECTION_START + old.text.split(SECTION_START, 1)[1].split(SECTION_END, 1)[0] + SECTION_END
    name = model_id.split("/")[-1] if "/" in model_id and not os.path.isdir(model_id) else model_id
    data = ModelCardData(
        model_name=name,
        base_model=card_base_model(info),
        datasets=[d["path"] for d in info.get("datasets", [])] or None,
        license=info.get("license", "other"),
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=["mini-llava", "vision-language", "trl", "sft", "custom_code"] + (["lora"] if info.get("lora") else []),
        eval_results=old.data.eval_results if old is not None else None,
    )
    card = ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        model_name=data.model_name,
        vision=bases.get("vision"),
        llm=bases.get("llm"),
        projector=projector_type(folder, recipe),
        snippet=SNIPPET.format(model_id=model_id),
        training=training_section(recipe, info, results),
    )
    if eval_section:
        card.text = card.text.rstrip() + "\n\n" + eval_section + "\n"
    card.save(path)
    return path


def main(argv=None) -> None:
    """`python -m recipes.provenance FOLDER [--model_id ID]`: rewrite a saved folder's card, e.g. after copying it
    or before pushing it to the Hub as ID."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder")
    parser.add_argument("--model_id", default=None)
    args = parser.parse_args(argv)
    print(write_training_card(args.folder, args.model_id))


if __name__ == "__main__":
    main()
