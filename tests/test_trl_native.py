"""TRL 1.16's own workflows on Mini-LLaVA, with none of our training code in the loop: SFTTrainer with TRL's vision
collator, GRPOTrainer on image prompts, and `trl sft` on a saved remote-code folder + a dataset in our schema."""

import json
import math
import os
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from data_scripts.make_synthetic import build_synthetic
from data_scripts.schema import load_dataset_dir

# TRL's configs default to bf16 + gradient checkpointing; a 2-core CPU wants neither.
ON_CPU = {
    "use_cpu": True,
    "bf16": False,
    "gradient_checkpointing": False,
    "report_to": "none",
    "save_strategy": "no",
    "dataloader_num_workers": 0,
    "logging_steps": 1,
    "seed": 0,
}
PROJECTOR = "model.multi_modal_projector.linear_1.weight"
TOWER = "model.vision_tower.embeddings.patch_embedding.weight"
SAVED_FILES = {
    "config.json",
    "model.safetensors",
    "modeling_minillava.py",
    "configuration_minillava.py",
    "projectors.py",
    "processing_minillava.py",
    "processor_config.json",
    "chat_template.jinja",
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> str:
    """A tiny dataset in our schema, as make_synthetic writes it (save_to_disk folder: train/validation/test)."""
    out = str(tmp_path_factory.mktemp("trl_data") / "synthetic")
    build_synthetic(out, n=24, seed=0)
    return out


@pytest.fixture(scope="module")
def train_rows(synthetic):
    """The train split reduced to what TRL reads: `messages` (HF multimodal chat) + `images`. Maps on it keep their
    results in memory: a `.map` cache file in the folder would be read as data by `load_dataset` (the CLI test)."""
    return load_dataset_dir(synthetic)["train"].select_columns(["messages", "images"])


def to_prompt_completion(rows):
    """Our rows in TRL's conversational prompt-completion form (user turn -> prompt, assistant turn -> completion)."""

    def split(row):
        return {"prompt": row["messages"][:1], "completion": row["messages"][1:]}

    return rows.map(split, remove_columns="messages", keep_in_memory=True)


def sft_trainer(model, processor, rows, out_dir, **overrides) -> SFTTrainer:
    args = SFTConfig(output_dir=str(out_dir), per_device_train_batch_size=2, learning_rate=1e-3, **ON_CPU, **overrides)
    return SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor)


def nll_reference(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over `keep` (positions of `labels`), in float64, written out by hand."""
    logp = logits[:, :-1].double().log_softmax(-1)
    target = labels[:, 1:]
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll[keep[:, 1:]].mean().float()


# ---- SFTTrainer + TRL's own vision collator ---------------------------------------------------------------------


def test_sft_trainer_with_trls_own_vision_collator_trains(build, train_rows, tmp_path):
    model, processor = build("siglip", "qwen2")
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if k in (PROJECTOR, TOWER)}
    trainer = sft_trainer(model, processor, train_rows, tmp_path, max_steps=3)  # no data_collator passed
    assert type(trainer.data_collator) is DataCollatorForVisionLanguageModeling  # chosen for the `images` column
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert trainer.state.global_step == 3 and len(losses) == 3
    assert all(math.isfinite(x) for x in losses), losses
    after = model.state_dict()
    assert not torch.equal(after[PROJECTOR], before[PROJECTOR])  # the projector learned
    assert torch.equal(after[TOWER], before[TOWER])  # the tower stays frozen (the model's default)


def test_model_loss_ignores_placeholders_that_trls_collator_labels(build, train_rows):
    model, processor = build("siglip", "qwen2")
    rows = [train_rows[i] for i in range(3)]
    batch = DataCollatorForVisionLanguageModeling(processor)(rows)
    labels, ids = batch["labels"], batch["input_ids"]
    is_image = ids == processor.image_token_id
    # TRL labels every placeholder (it only masks padding): any masking is the model's doing.
    assert int(is_image.sum()) == len(rows) * processor.num_image_tokens
    assert torch.equal(labels[is_image], ids[is_image])
    assert torch.equal(labels == -100, batch["attention_mask"] == 0)
    with torch.no_grad():
        out = model(**batch)
    text_only = (labels != -100) & ~is_image
    torch.testing.assert_close(out.loss, nll_reference(out.logits, labels, text_only), atol=1e-6, rtol=0)
    # Scoring the placeholders too would give a clearly different number, so the check above can fail.
    assert abs(out.loss - nll_reference(out.logits, labels, labels != -100)) > 1e-2


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="TRL 1.16 SFTTrainer.compute_loss calls model(**inputs, fused_lm_head=True); the fused head "
    "(trl/trainer/utils.py:1616-1627) runs the backbone and scores the collator's labels itself, so the "
    "model's own placeholder masking never runs and TRL's labels on placeholders are trained. With an image id "
    "outside the LM head (llama stand-in: id == vocab_size) the kernel scores those targets against logit 0 "
    "(trl/kernels/chunked_logprob.py:252-254, target_logit initialised to zeros at :346).",
)
@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_sft_trainer_messages_form_training_loss_skips_placeholders(build, train_rows, tmp_path, llm):
    model, processor = build("siglip", llm)
    trainer = sft_trainer(model, processor, train_rows, tmp_path, max_steps=1)
    batch = trainer.data_collator([train_rows[i] for i in range(3)])
    with torch.no_grad():
        model_loss = model(**batch).loss
        trainer_loss = trainer.compute_loss(model, dict(batch))  # what SFTTrainer.train() backpropagates
    torch.testing.assert_close(trainer_loss, model_loss, atol=1e-6, rtol=0)


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_sft_trainer_prompt_completion_form_never_scores_placeholders(build, train_rows, tmp_path, llm):
    model, processor = build("siglip", llm)
    rows = to_prompt_completion(train_rows)
    trainer = sft_trainer(model, processor, rows, tmp_path, max_steps=1)
    assert trainer.data_collator.completion_only_loss  # TRL's default for prompt-completion data
    examples = [rows[i] for i in range(3)]
    batch = trainer.data_collator(examples)
    labels, ids = batch["labels"], batch["input_ids"]
    assert int((ids == processor.image_token_id).sum()) == len(examples) * processor.num_image_tokens
    assert not (labels == processor.image_token_id).any()
    for row, example in zip(labels, examples):  # exactly the answer + end of turn is labelled
        answer = example["completion"][0]["content"][0]["text"]
        assert processor.tokenizer.decode(row[row != -100]).strip().startswith(answer)
    with torch.no_grad():
        model_loss = model(**batch).loss
        trainer_loss = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(trainer_loss, model_loss, atol=1e-6, rtol=0)  # fused head == model loss


# ---- GRPOTrainer on image prompts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpo_run(build, train_rows, tmp_path_factory) -> dict:
    """2 GRPO steps, 2 prompts x 2 generations per step, 4 new tokens, reward = -len(completion text).

    Prompts are our rows' user turns (`prompt` = multimodal messages, `images` column), picked with pairwise different
    token lengths so every generation batch needs padding. `model.generate` is wrapped to record what TRL passes.
    """
    model, processor = build("siglip", "qwen2")
    prompts = train_rows.map(lambda r: {"prompt": r["messages"][:1]}, remove_columns="messages", keep_in_memory=True)
    lengths = [
        len(processor.tokenizer(processor.apply_chat_template(p, add_generation_prompt=True)).input_ids)
        for p in prompts["prompt"]
    ]
    picked = [lengths.index(n) for n in sorted(set(lengths))][:4]
    assert len(picked) == 4, lengths
    calls, seen = [], []
    generate = model.generate

    def recording_generate(**kwargs):
        out = generate(**kwargs)
        calls.append({"input_ids": kwargs["input_ids"], "attention_mask": kwargs["attention_mask"], "out": out})
        return out

    def shorter_is_better(completions, completion_ids: list[list[int]], **kwargs) -> list[float]:
        seen.extend(completion_ids)
        return [-float(len(c[0]["content"])) for c in completions]

    model.generate = recording_generate
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("grpo")),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        learning_rate=1e-3,
        log_completions=False,
        **ON_CPU,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=shorter_is_better,
        args=args,
        train_dataset=prompts.select(picked),
        processing_class=processor,
    )
    trainer.train()
    return {"trainer": trainer, "calls": calls, "completion_ids": seen, "processor": processor}


@pytest.mark.slow
def test_grpo_trainer_runs_two_steps_on_image_prompts(grpo_run):
    trainer, calls = grpo_run["trainer"], grpo_run["calls"]
    assert trainer.state.global_step == 2
    logs = [e for e in trainer.state.log_history if "reward" in e]
    assert [e["step"] for e in logs] == [1, 2]
    assert all(math.isfinite(e["reward"]) and e["reward"] <= 0 for e in logs)
    assert all(e["completions/mean_length"] > 0 for e in logs)
    # TRL slices completions as ids[:, prompt_len:]: generate must return prompt + new tokens.
    assert len(calls) == 2
    for call in calls:
        prompt_len = call["input_ids"].shape[1]
        assert call["out"].shape[1] > prompt_len
        assert torch.equal(call["out"][:, :prompt_len], call["input_ids"])
    assert len(grpo_run["completion_ids"]) == 8  # 2 steps x 2 prompts x 2 generations
    assert all(len(ids) > 0 for ids in grpo_run["completion_ids"])


@pytest.mark.slow
def test_grpo_prompts_reach_generate_without_padding_inside(grpo_run):
    """TRL tokenizes prompts with `processor.apply_chat_template(prompts, tokenize=True, return_dict=True)` and expects
    one unpadded id list per prompt (as LlavaProcessor returns), then left-pads them itself. Pad tokens with
    attention 1 would sit between a shorter prompt and its completion."""
    pad = grpo_run["processor"].tokenizer.pad_token_id
    for call in grpo_run["calls"]:
        attended_pads = ((call["input_ids"] == pad) & (call["attention_mask"] == 1)).sum(-1)
        assert attended_pads.tolist() == [0] * len(attended_pads), call["attention_mask"].sum(-1).tolist()


# ---- the `trl sft` CLI on a remote-code folder -------------------------------------------------------------------


def cli_args(model_dir: str, dataset_dir: str, out_dir: str) -> list[str]:
    return [
        "--model_name_or_path",
        model_dir,
        "--trust_remote_code",
        "--dataset_name",
        dataset_dir,
        "--output_dir",
        out_dir,
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "1e-3",
        "--use_cpu",
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--dataloader_num_workers",
        "0",
    ]


# `python -m trl.scripts.sft` with the project made unimportable: only the folder's remote code can serve; then the
# output folder is reloaded the way a user would and generates.
CHILD = textwrap.dedent(
    """
    import json, runpy, sys
    for name in ("modeling_minillava", "processing", "data_scripts", "metrics", "run_sft"):
        sys.modules[name] = None
    args, result = sys.argv[1:-1], sys.argv[-1]
    sys.argv = ["sft", *args]
    runpy.run_module("trl.scripts.sft", run_name="__main__")

    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    out = args[args.index("--output_dir") + 1]
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    image = Image.new("RGB", (64, 48), (200, 30, 90))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Total?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    json.dump({"model": type(model).__module__, "processor": type(processor).__module__,
               "prompt_len": inputs["input_ids"].shape[1], "generated_len": generated.shape[1]}, open(result, "w"))
    """
)


@pytest.fixture(scope="module")
def model_folder(build, tmp_path_factory) -> str:
    model, processor = build("siglip", "qwen2")
    folder = tmp_path_factory.mktemp("remote_code") / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_trl_console_script_forwards_our_flags_to_the_sft_script(monkeypatch, tmp_path):
    """`trl sft ARGS` = `accelerate launch trl/scripts/sft.py ARGS` (what the next test runs without the launcher)."""
    import trl.cli.accelerate_launcher as launcher
    from trl.cli.main import main as trl_main

    launched = {}
    monkeypatch.setattr(launcher, "launch_training_script", lambda **kwargs: launched.update(kwargs))
    args = cli_args("model_dir", "dataset_dir", str(tmp_path / "out"))
    assert trl_main(["sft", *args]) == 0
    assert launched == {"script_name": "sft.py", "launch_args": [], "training_script_args": args}  # all flags known


@pytest.mark.slow
def test_trl_sft_script_trains_remote_code_folder_on_our_dataset(model_folder, synthetic, tmp_path, fresh_python):
    out, result = tmp_path / "sft_out", tmp_path / "child.json"
    # `load_dataset(folder)` reads EVERY *.arrow under a split folder, `.map` cache files included.
    assert not [f for _, _, names in os.walk(synthetic) for f in names if f.startswith("cache-")]
    fresh_python(
        CHILD,
        *cli_args(model_folder, synthetic, str(out)),
        result,
        timeout=300,
        HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
    )

    assert set(os.listdir(out)) >= SAVED_FILES  # a whole remote-code model + processor
    assert "AutoModelForImageTextToText" in json.loads((out / "config.json").read_text())["auto_map"]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses

    child = json.loads(result.read_text())
    assert {child["model"].split(".")[0], child["processor"].split(".")[0]} == {"transformers_modules"}  # remote code
    assert child["generated_len"] == child["prompt_len"] + 3

    before, after = load_file(os.path.join(model_folder, "model.safetensors")), load_file(out / "model.safetensors")
    assert not torch.equal(after[PROJECTOR], before[PROJECTOR])
    assert torch.equal(after[TOWER], before[TOWER])  # the tower is frozen unless a recipe unfreezes it


def test_sft_trainer_given_a_model_folder_keeps_the_tower_frozen(model_folder, train_rows, tmp_path):
    """TRL loads a path with from_pretrained (trl/trainer/utils.py:1366), as `trl sft` does: the model's frozen-tower
    default must survive loading, not only the constructor."""
    from transformers import AutoModelForImageTextToText

    loaded = AutoModelForImageTextToText.from_pretrained(model_folder)
    assert not any(p.requires_grad for p in loaded.model.vision_tower.parameters())
    trainer = SFTTrainer(
        model=model_folder, args=SFTConfig(output_dir=str(tmp_path), max_steps=1, **ON_CPU), train_dataset=train_rows
    )
    assert not any(p.requires_grad for p in trainer.model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in trainer.model.model.multi_modal_projector.parameters())
