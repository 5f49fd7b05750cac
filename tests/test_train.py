"""run_sft.py end to end on the tiny backbones (CPU, offline): real sizes on meta, train plans,
determinism, a SIGKILLed run resumed bit-identically, LoRA/QLoRA artefacts, run_info and MLflow logging."""

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import recipes
from data_scripts.schema import load_dataset_dir
from modeling_minillava import MiniLlavaConfig, MiniLlavaForConditionalGeneration
from processing import MiniLlavaProcessor
from processing.collator import MiniLlavaDataCollator
from recipes.arguments import LLM_LINEAR_NAMES
from recipes.builder import apply_train_plan, build_model, lora_config
from recipes.checkpoints import COMPLETE_MARKER, last_complete_checkpoint
from recipes.provenance import describe_train_plan, train_plan_counts

ROOT = Path(__file__).resolve().parents[1]
# The real recipes say bf16 (H100); transformers refuses bf16 on a host without a bf16 GPU unless use_cpu is set.
ON_CPU = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
BACKBONE_JSON = {
    "Qwen/Qwen2.5-1.5B-Instruct": "qwen2.5-1.5b-instruct.json",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b-instruct.json",
    "google/siglip-so400m-patch14-384": "siglip-so400m-patch14-384.json",
}
PLAN_LINE = re.compile(r"^\s+(\w+)\s+(TRAINABLE|PARTIAL|FROZEN|TIED)\s+([\d,]+) / +([\d,]+)$")


def mlp2x_count(d_in: int, hidden: int) -> int:
    """Linear(d_in -> H) + GELU + Linear(H -> H), with biases."""
    return d_in * hidden + hidden + hidden * hidden + hidden


@pytest.fixture(scope="module")
def synthetic(synthetic_set) -> str:
    return synthetic_set


@pytest.fixture(scope="module")
def write_recipe(backbones, synthetic):
    """write_recipe(folder, name, **overrides) -> recipe path: a tiny full-model CPU run (3 steps of 2 rows, no
    saves); a None override drops the key."""

    def _write(folder: Path, name: str, **overrides) -> str:
        recipe = {
            "vision_name": backbones["vision-siglip"],
            "llm_name": backbones["llm-qwen2"],
            "train_projector": True,
            "llm_full": True,
            "datasets": [{"path": synthetic, "split": "train"}],
            "max_train_samples": 16,
            "max_eval_samples": 4,
            "output_dir": str(folder / name),
            "use_cpu": True,
            "bf16": False,
            "gradient_checkpointing": False,
            "per_device_train_batch_size": 2,
            "per_device_eval_batch_size": 2,
            "max_steps": 3,
            "learning_rate": 1.0e-3,
            "logging_steps": 1,
            "save_strategy": "no",
            "eval_strategy": "no",
            "seed": 0,
            "dataloader_num_workers": 0,
            "report_to": "none",
        }
        recipe.update(overrides)
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}))
        return str(path)

    return _write


def run_script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "run_sft.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def steps_to_loss(log_history: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in log_history if "loss" in e}


def batch_of(processor, synthetic: str, n: int = 2) -> dict[str, torch.Tensor]:
    """n validation rows of the synthetic set through the training collator (labels kept for a loss)."""
    rows = [load_dataset_dir(synthetic)["validation"][i] for i in range(n)]
    return MiniLlavaDataCollator(processor)(rows)


def logits_of(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, write_recipe) -> dict:
    """One uninterrupted full-model run, 8 steps, a checkpoint every 2, in a fresh process (`python run_sft.py`)."""
    folder = tmp_path_factory.mktemp("full")
    recipe = write_recipe(folder, "run", max_steps=8, save_strategy="steps", save_steps=2, seed=3)
    run_script(recipe)
    out = folder / "run"
    return {"recipe": recipe, "out": out, "results": json.loads((out / "train_results.json").read_text())}


# ---- recipes ----------------------------------------------------------------------------------------------------


STAGE1 = {"1.5b": ["recipes/stage1.yaml"], "7b": ["recipes/stage1.yaml", "recipes/stage1_7b.yaml"]}


@pytest.mark.parametrize("size, hidden", [("1.5b", 1536), ("7b", 3584)])
def test_stage1_builds_real_sizes_on_meta_with_only_the_projector_trainable(size, hidden):
    from transformers import AutoConfig

    model_args, _, training_args = recipes.parse_recipe([*(str(ROOT / r) for r in STAGE1[size]), *ON_CPU])

    def config_of(hub_id: str):
        return AutoConfig.for_model(**json.loads((ROOT / "recipes/backbones" / BACKBONE_JSON[hub_id]).read_text()))

    config = MiniLlavaConfig(
        vision_config=config_of(model_args.vision_name),
        text_config=config_of(model_args.llm_name),
        projector_type=model_args.projector_type,
        vision_feature_layer=model_args.vision_feature_layer,
        image_position=model_args.image_position,
    )
    with torch.device("meta"):
        model = MiniLlavaForConditionalGeneration(config)
    model = apply_train_plan(model, model_args, training_args.gradient_checkpointing)
    assert model.config.text_config.hidden_size == hidden
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("model.multi_modal_projector.") for n in trainable)
    assert sum(trainable.values()) == mlp2x_count(1152, hidden)  # SigLIP-so400m width 1152
    plan = {m[1]: m[2] for m in map(PLAN_LINE.match, describe_train_plan(train_plan_counts(model)).splitlines()[1:])}
    assert plan == {"vision_tower": "FROZEN", "multi_modal_projector": "TRAINABLE", "language_model": "FROZEN",
                    "lm_head": "TIED" if hidden == 1536 else "FROZEN"}  # fmt: skip  # 1.5B ties its head, 7B not


@pytest.mark.slow
@pytest.mark.parametrize("size", ["1.5b", "7b"])
def test_stage1_builds_and_runs_with_tiny_backbones(size, backbones, synthetic):
    tiny = ["--vision_name", backbones["vision-siglip"], "--llm_name", backbones["llm-qwen2"]]  # CLI overrides
    model_args, _, training_args = recipes.parse_recipe([*(str(ROOT / r) for r in STAGE1[size]), *ON_CPU, *tiny])
    model, processor = build_model(model_args, training_args), recipes.build_processor(model_args)[0]
    model = apply_train_plan(model, model_args, training_args.gradient_checkpointing)
    assert model.dtype == torch.bfloat16  # the recipe's dtype
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == mlp2x_count(model.config.vision_config.hidden_size, model.config.text_config.hidden_size)
    model.train()
    loss = model(**batch_of(processor, synthetic)).loss
    loss.backward()
    assert math.isfinite(loss.item())
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "changes, error, names",
    [
        ({"lora_rank": 8}, ValueError, ["Unknown recipe keys", "'lora_rank'"]),
        ({"lora_r": "eight"}, ValueError, ["lora_r", "eight"]),
        ({"lora_r": [8]}, ValueError, ["lora_r"]),
        ({"lora_r": -1}, ValueError, ["Recipe key 'lora_r' must be >= 0 (0 turns LoRA off), got -1"]),
        ({"lora_dropout": 1.5}, ValueError, ["'lora_dropout' must be in [0, 1), got 1.5"]),
        ({"lora_alpha": 0}, ValueError, ["'lora_alpha' must be > 0, got 0"]),
        ({"lora_target_modules": []}, ValueError, ["'lora_target_modules' must be a non-empty list"]),
        ({"projector_type": "mlp"}, ValueError, ["'projector_type' must be one of", "'mlp2x_gelu'", "got 'mlp'"]),
        ({"image_position": "suffix"}, ValueError, ["'image_position' must be one of ('prefix', 'user_turn')"]),
        ({"max_tiles": 0}, ValueError, ["'max_tiles' must be > 0 or null, got 0"]),
        ({"dtype": "fp8"}, ValueError, ["'dtype' must be float32, bfloat16 or float16, got 'fp8'"]),
        ({"max_skip_fraction": 2}, ValueError, ["'max_skip_fraction' must be in [0, 1], got 2"]),
        ({"llm_top_k_blocks": -2}, ValueError, ["'llm_top_k_blocks' must be >= 0, got -2"]),
        ({"datasets": []}, ValueError, ["datasets"]),
        ({"vision_name": None, "llm_name": None}, ValueError, ["init_from", "vision_name", "llm_name"]),
        ({"llm_name": None}, ValueError, ["init_from", "llm_name"]),
        ({"llm_full": True, "lora_r": 8}, ValueError, ["llm_full", "lora_r"]),
        ({"load_in_4bit": True, "lora_r": 8}, ValueError, ["init_from"]),
        ({"init_from": "stage1"}, ValueError, ["['vision_name', 'llm_name']", "init_from: null"]),  # fixed by it
        (
            {"init_from": "stage1", "vision_name": None, "llm_name": None, "load_in_4bit": True, "lora_r": 8},
            ValueError,
            ["bf16"],
        ),
    ],
)
def test_bad_recipes_fail_at_parse_time_naming_the_key(placeholder_recipe, changes, error, names):
    with pytest.raises(error) as info:
        recipes.parse_recipe([placeholder_recipe(**changes)])
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize("value, parsed", [(True, "true"), (False, None), ("true", "true"), ("o/ckpt-4", "o/ckpt-4")])
def test_resume_from_checkpoint_reads_yaml_booleans(placeholder_recipe, value, parsed):
    """YAML `resume_from_checkpoint: true` is a bool where TrainingArguments types a str (once refused: "must be
    str"); `false` is unset."""
    _, _, training_args = recipes.parse_recipe([placeholder_recipe(resume_from_checkpoint=value)])
    assert training_args.resume_from_checkpoint == parsed


def test_missing_recipe_names_the_path(tmp_path):
    missing = str(tmp_path / "nope" / "stage9.yaml")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        recipes.parse_recipe([missing])


# ---- train plans ------------------------------------------------------------------------------------------------


def lora_on(init: str) -> dict:
    """Recipe keys of a LoRA run on a saved model (init_from fixes its backbones)."""
    return {"init_from": init, "vision_name": None, "llm_name": None, "llm_full": False}


def plan_of(model) -> dict[str, tuple[str, int, int]]:
    text = describe_train_plan(train_plan_counts(model))
    assert text.startswith("Train plan:")
    lines = [PLAN_LINE.match(line) for line in text.splitlines()[1:]]
    assert all(lines), text
    return {m[1]: (m[2], int(m[3].replace(",", "")), int(m[4].replace(",", ""))) for m in lines}


def with_lora(model, model_args):
    """The train plan as build_trainer applies it: freezing here, LoRA as SFTTrainer's PEFT path does."""
    from peft import get_peft_model

    model = apply_train_plan(model, model_args, False)
    return get_peft_model(model, lora_config(model, model_args))


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_train_plan_stage1(build, write_recipe, tmp_path):
    model, _ = build("siglip", "llama")  # untied head: lm_head gets its own line
    model_args, _, _ = recipes.parse_recipe([write_recipe(tmp_path, "r", llm_full=False)])
    inner = model.model
    n_proj = mlp2x_count(model.config.vision_config.hidden_size, model.config.text_config.hidden_size)
    assert n_proj == numel(inner.multi_modal_projector)
    expected = {
        "vision_tower": ("FROZEN", 0, numel(inner.vision_tower)),
        "multi_modal_projector": ("TRAINABLE", n_proj, n_proj),
        "language_model": ("FROZEN", 0, numel(inner.language_model)),
        "lm_head": ("FROZEN", 0, model.lm_head.weight.numel()),
    }
    assert plan_of(apply_train_plan(model, model_args, False)) == expected


def test_train_plan_lora(build, write_recipe, tmp_path):
    model, _ = build("siglip", "qwen2")  # tied head: counted with the embeddings, lm_head shows TIED
    model_args, _, _ = recipes.parse_recipe([write_recipe(tmp_path, "r", llm_full=False, lora_r=4)])
    inner = model.model
    n_vision, n_llm = numel(inner.vision_tower), numel(inner.language_model)
    n_proj = numel(inner.multi_modal_projector)
    # LoRA adds r * (in + out) per targeted Linear of the LLM.
    n_lora = sum(
        4 * (m.in_features + m.out_features)
        for name, m in inner.language_model.named_modules()
        if name.rsplit(".", 1)[-1] in LLM_LINEAR_NAMES
    )
    assert n_lora > 0
    expected = {
        "vision_tower": ("FROZEN", 0, n_vision),
        "multi_modal_projector": ("TRAINABLE", n_proj, n_proj),  # the modules_to_save copy, counted once
        "language_model": ("PARTIAL", n_lora, n_llm + n_lora),
        "lm_head": ("TIED", 0, 0),
    }
    assert plan_of(with_lora(model, model_args)) == expected


# ---- determinism and resume -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_same_losses_other_seed_differs(write_recipe, tmp_path):
    runs = {
        name: recipes.run([write_recipe(tmp_path, name, seed=seed)]) for name, seed in [("a", 0), ("b", 0), ("c", 1)]
    }
    losses = {name: [loss for _, loss in summary["losses"]] for name, summary in runs.items()}
    assert len(losses["a"]) == 3 and all(math.isfinite(x) for x in losses["a"])
    assert losses["a"] == losses["b"]
    assert losses["a"] != losses["c"]


@pytest.mark.slow
def test_sigkilled_run_resumes_bit_identically_skipping_half_written_checkpoints(full_run, write_recipe, tmp_path):
    recipe = write_recipe(tmp_path, "run", max_steps=8, save_strategy="steps", save_steps=2, seed=3)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "run_sft.py", recipe], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint-4" / COMPLETE_MARKER).exists():
            assert proc.poll() is None, f"run ended (rc {proc.returncode}) before checkpoint-4 was complete"
            assert time.monotonic() < deadline, "no complete checkpoint-4 within 240 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # no polite stop: nothing after this point gets written
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "train_results.json").exists()
    # The kill lands within a step or two of checkpoint-4; pin the resume point there, then plant a half-written
    # checkpoint-6 (no marker, truncated weights) that a plain "newest checkpoint" rule would pick and choke on.
    for later in out.glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > 4:
            shutil.rmtree(later)
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")
    (out / "checkpoint-6" / COMPLETE_MARKER).unlink()
    weights = out / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-4")

    resumed = run_script(recipe, "--resume_from_checkpoint", "true")
    assert f"Resuming from {out / 'checkpoint-4'}" in resumed.stderr
    losses = steps_to_loss(json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["log_history"])
    reference = dict(full_run["results"]["losses"])
    assert sorted(losses) == list(range(1, 9))
    assert {s: losses[s] for s in range(5, 9)} == {s: reference[s] for s in range(5, 9)}  # bit-identical
    assert {s: losses[s] for s in range(1, 5)} == {s: reference[s] for s in range(1, 5)}  # same run up to the kill
    final, reference_final = load_file(out / "model.safetensors"), load_file(full_run["out"] / "model.safetensors")
    assert final.keys() == reference_final.keys()
    assert all(torch.equal(final[k], reference_final[k]) for k in final)


# ---- artefacts --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_checkpoints_are_whole_and_loadable(full_run, synthetic):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = full_run["out"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in (2, 4, 6, 8)]
    assert all((out / f"checkpoint-{n}" / COMPLETE_MARKER).exists() for n in (2, 4, 6, 8))
    processor = AutoProcessor.from_pretrained(out / "checkpoint-4", trust_remote_code=True)
    batch = batch_of(processor, synthetic)
    logits = {}
    for name in ("checkpoint-4", "checkpoint-8", "."):
        model = AutoModelForImageTextToText.from_pretrained(out / name, trust_remote_code=True)
        assert type(model).__name__ == "MiniLlavaForConditionalGeneration"
        logits[name] = logits_of(model, batch)
    assert torch.isfinite(logits["checkpoint-4"]).all()
    assert torch.equal(logits["checkpoint-8"], logits["."])  # the last checkpoint is the final model
    assert not torch.equal(logits["checkpoint-4"], logits["."])  # and step 4's weights are its own


@pytest.mark.slow
def test_every_saved_folder_carries_its_provenance(full_run, synthetic, backbones, fresh_python):
    import peft
    import transformers
    import trl
    from huggingface_hub import ModelCard

    out = full_run["out"]
    for folder in (out, out / "checkpoint-4"):
        assert {"recipe.yaml", "run_info.json", "README.md"} <= set(os.listdir(folder)), folder
    info = json.loads((out / "run_info.json").read_text())
    # Local folders outside the launch directory are named by their folder name, never by this machine's path.
    assert info["base_models"] == {"vision": "vision-siglip", "llm": "llm-qwen2"}
    manifest = json.loads((Path(synthetic) / "manifest.json").read_text())
    assert info["datasets"] == [
        {"path": "synthetic", "split": "train", "fraction": None, "fingerprint": manifest["fingerprint"]}
    ]
    assert info["seed"] == 3 and info["train_rows"] == 16 and info["world_size"] == 1
    assert re.fullmatch(r"[0-9a-f]{40}", info["git_commit"])
    # Others may commit while this runs: the recorded commit must be HEAD or one of its ancestors.
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", info["git_commit"], "HEAD"], cwd=ROOT)
    assert ancestor.returncode == 0
    assert isinstance(info["git_dirty"], bool)
    assert info["packages"]["torch"] == torch.__version__
    assert (info["packages"]["transformers"], info["packages"]["trl"], info["packages"]["peft"]) == (
        transformers.__version__,
        trl.__version__,
        peft.__version__,
    )
    model = MiniLlavaForConditionalGeneration.from_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    plan = info["train_plan"]
    assert sum(c["total"] for c in plan.values()) == n_params  # tied head counted once
    assert plan["vision_tower"]["trainable"] == 0 and plan["language_model"]["trainable"] > 0
    assert info["global_step"] == 8 and info["tokens_seen"] == full_run["results"]["num_tokens"] > 0
    checkpoint_info = json.loads((out / "checkpoint-4" / "run_info.json").read_text())
    assert checkpoint_info["global_step"] == 4 and 0 < checkpoint_info["tokens_seen"] < info["tokens_seen"]

    # The resolved recipe runs the same configuration again.
    again = recipes.parse_recipe([str(out / "recipe.yaml")])
    original = recipes.parse_recipe([full_run["recipe"]])
    for a, b in zip(again, original):
        assert (a.to_dict() if hasattr(a, "to_dict") else dataclasses.asdict(a)) == (
            b.to_dict() if hasattr(b, "to_dict") else dataclasses.asdict(b)
        )

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == ["vision-siglip", "llm-qwen2"] and card.data.datasets == ["synthetic"]
    assert (card.data.pipeline_tag, card.data.license) == ("image-text-to-text", "other")

    snippet = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    # The card names the folder as the launch directory sees it (here a temporary folder outside the repo: by name).
    assert 'model_id = "run"' in snippet
    fresh_python(snippet, cwd=out.parent, timeout=300)

    results = full_run["results"]
    assert json.loads((out / "train_results.json").read_text()) == results
    history = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["log_history"]
    logged = steps_to_loss(history)
    assert sorted(logged) == list(range(1, 9))
    assert results["first_loss"] == logged[1]
    assert results["last_loss"] == logged[8]
    assert dict(results["losses"]) == logged
    assert results["global_step"] == 8
    assert results["collator"]["kept"] == results["collator"]["seen"] > 0


# ---- LoRA and QLoRA ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_save_load_merge_reproduces_logits(full_run, write_recipe, synthetic, tmp_path):
    from peft import PeftModel

    init = str(full_run["out"])
    model_args, _, _ = recipes.parse_recipe([write_recipe(tmp_path, "r", **lora_on(init), lora_r=8)])
    model = with_lora(MiniLlavaForConditionalGeneration.from_pretrained(init), model_args)
    torch.manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero: give the adapter and the projector copy something to carry
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    processor = MiniLlavaProcessor.from_pretrained(init)
    batch = batch_of(processor, synthetic)
    expected = logits_of(model, batch)
    model.save_pretrained(tmp_path / "adapter")

    base = MiniLlavaForConditionalGeneration.from_pretrained(init)
    base_logits = logits_of(base, batch)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert torch.equal(logits_of(loaded, batch), expected)
    assert not torch.allclose(base_logits, expected, atol=1e-3)  # the adapter matters
    merged = loaded.merge_and_unload()
    assert type(merged) is MiniLlavaForConditionalGeneration
    torch.testing.assert_close(logits_of(merged, batch), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_lora_run_checkpoint_and_merged_folder(full_run, write_recipe, synthetic, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    init = str(full_run["out"])
    recipe = write_recipe(
        tmp_path,
        "lora",
        **lora_on(init),
        lora_r=8,
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    summary = recipes.run([recipe])
    assert summary["global_step"] == 2
    out = tmp_path / "lora"
    checkpoint = out / "checkpoint-2"
    files = set(os.listdir(checkpoint))
    assert {"adapter_config.json", "adapter_model.safetensors", COMPLETE_MARKER} <= files
    assert {"processor_config.json", "tokenizer.json", "chat_template.jinja"} <= files
    assert "model.safetensors" not in files  # an adapter, not a second copy of the base
    saved = load_file(checkpoint / "adapter_model.safetensors")
    projector = {k for k in saved if "multi_modal_projector" in k}
    assert len(projector) == 4  # linear_1/linear_2 weight + bias (modules_to_save)
    assert any("lora_B" in k for k in saved)

    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    batch = batch_of(processor, synthetic)
    base_logits = logits_of(MiniLlavaForConditionalGeneration.from_pretrained(init), batch)
    at_checkpoint = PeftModel.from_pretrained(MiniLlavaForConditionalGeneration.from_pretrained(init), checkpoint)
    in_process = PeftModel.from_pretrained(MiniLlavaForConditionalGeneration.from_pretrained(init), out)
    expected = logits_of(in_process, batch)
    assert torch.equal(logits_of(at_checkpoint, batch), expected)  # step 2 is the last step
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # training changed the adapter
    merged_here = logits_of(in_process.merge_and_unload(), batch)
    torch.testing.assert_close(merged_here, expected, atol=1e-5, rtol=0)
    merged = AutoModelForImageTextToText.from_pretrained(out / "merged", trust_remote_code=True)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits_of(merged, batch), merged_here, atol=1e-5, rtol=0)
    assert AutoProcessor.from_pretrained(out / "merged", trust_remote_code=True).chat_template == (
        processor.chat_template
    )


@pytest.mark.slow
def test_qlora_trains_on_cpu(full_run, write_recipe, synthetic, tmp_path):
    import bitsandbytes as bnb

    init = str(full_run["out"])
    recipe = write_recipe(
        tmp_path,
        "qlora",
        **lora_on(init),
        load_in_4bit=True,
        lora_r=8,
        lora_dropout=0.0,
        dtype="bfloat16",
        bf16=True,
        max_steps=2,  # as recipes/stage2_7b_qlora.yaml
        eval_strategy="steps",
        eval_steps=1,  # an eval (no_grad) forward between training steps: the CPU trap
        attn_implementation="eager",  # not the default (sdpa): the 4-bit load once dropped the recipe's choice
    )
    model_args, _, training_args = recipes.parse_recipe([recipe])
    model, processor = build_model(model_args, training_args), recipes.build_processor(model_args)[0]
    assert model.config._attn_implementation == model.config.text_config._attn_implementation == "eager"
    model = with_lora(model, model_args)
    inner = model.get_base_model().model
    for name in LLM_LINEAR_NAMES:
        layers = [m for n, m in inner.language_model.named_modules() if n.endswith(name)]
        assert layers and all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in layers), name
    for part in (inner.vision_tower, inner.multi_modal_projector, model.get_base_model().lm_head):
        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in part.modules())
        assert all(p.is_floating_point() for p in part.parameters())
    batch = batch_of(processor, synthetic)
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)

    summary = recipes.run([recipe])  # evaluates after every step
    assert summary["global_step"] == 2
    assert len(summary["losses"]) == 2 and all(math.isfinite(loss) for _, loss in summary["losses"])
    saved = load_file(tmp_path / "qlora" / "adapter_model.safetensors")
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # initialised at zero: training moved them
    projector_before = load_file(Path(init) / "model.safetensors")["model.multi_modal_projector.linear_1.weight"]
    projector_after = next(v for k, v in saved.items() if k.endswith("multi_modal_projector.linear_1.weight"))
    assert not torch.equal(projector_before.to(projector_after.dtype), projector_after)  # the projector trained
    assert not (tmp_path / "qlora" / "merged").exists()  # no merge into 4-bit weights


# ---- logging ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_logs_into_the_run_folder(write_recipe, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("DISABLE_MLFLOW_INTEGRATION", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset-below")  # recorded, so the value main() sets is undone
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    summary = recipes.run([write_recipe(tmp_path, "ml", max_steps=2, report_to="mlflow")])
    db = tmp_path / "ml" / "mlflow.db"
    assert db.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, pytest.approx(v)) for s, v in summary["losses"]]
