"""Train Mini-LLaVA on TRL's SFTTrainer from a YAML recipe; CLI flags override the recipe.

    accelerate launch run_sft.py recipes/stage2.yaml --learning_rate 1e-4
    python run_sft.py recipes/stage1.yaml

This file owns policy: which modules train (the train plan), which data, where artefacts go. The model, processor
and collator know nothing of it.
"""

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field

import torch
import transformers
from transformers import BitsAndBytesConfig, GenerationConfig, TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer, TrlParser
from trl.scripts.utils import DatasetMixtureConfig

from data_scripts.check_rows import check_rows, enforce_skip_fraction
from data_scripts.manifest import git_state
from data_scripts.schema import load_dataset_dir
from modeling_minillava import MiniLlavaConfig, MiniLlavaForConditionalGeneration
from processing import MiniLlavaProcessor
from processing.collator import MiniLlavaDataCollator

logger = logging.getLogger("run_sft")
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"  # written after the Trainer finished a checkpoint; resume only trusts these
LLM_LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelArguments:
    vision_name: str | None = field(default=None, metadata={"help": "vision tower: Hub id or local folder"})
    llm_name: str | None = field(default=None, metadata={"help": "causal LM: Hub id or local folder"})
    init_from: str | None = field(default=None, metadata={"help": "a previous stage's output (model + processor)"})
    projector_type: str = "mlp2x_gelu"
    perceiver_num_latents: int = 64
    pixel_shuffle_factor: int = 2
    vision_feature_layer: int = -1
    image_position: str | None = field(
        default=None, metadata={"help": "prefix | user_turn; default: user_turn, or init_from's layout"}
    )
    # The train plan: what is trainable in this stage.
    train_projector: bool = True
    train_vision: bool = field(default=False, metadata={"help": "unfreeze the vision tower (tiny random towers)"})
    llm_full: bool = False
    llm_top_k_blocks: int = field(default=0, metadata={"help": "fully train the last k LLM blocks"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the LLM; 0 disables LoRA"})
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LLM_LINEAR_NAMES))
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: 4-bit NF4 LLM (vision + projector stay)"})
    load_in_8bit: bool = False
    dtype: str = field(default="float32", metadata={"help": "weights dtype: float32 | bfloat16 | float16"})
    attn_implementation: str | None = None


@dataclass
class DataArguments(DatasetMixtureConfig):
    """TRL's dataset mixture (`datasets: [{path, split, fraction}, ...]`), read with our loader (save_to_disk folders
    and Hub ids of datasets in the canonical schema)."""

    eval_split: str | None = "validation"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_skip_fraction: float = 0.05


class MarkCompleteCheckpoints(TrainerCallback):
    """`on_save` fires after the Trainer wrote everything, so the marker proves the checkpoint is whole."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            open(os.path.join(path, COMPLETE_MARKER), "w").close()


def last_complete_checkpoint(output_dir: str) -> str | None:
    """Newest checkpoint-N that holds the completion marker; a half-written one (killed mid-save) is skipped."""
    if not os.path.isdir(output_dir):
        return None
    names = [n for n in os.listdir(output_dir) if n.startswith("checkpoint-") and n.split("-")[1].isdigit()]
    for name in sorted(names, key=lambda n: int(n.split("-")[1]), reverse=True):
        if os.path.exists(os.path.join(output_dir, name, COMPLETE_MARKER)):
            return os.path.join(output_dir, name)
        logger.warning(f"Skipping {name}: no {COMPLETE_MARKER} (interrupted while saving).")
    return None


def check_types(*configs) -> None:
    """YAML values reach dataclasses unconverted: reject a wrong type at parse time, naming the key."""
    for cfg in configs:
        hints = typing.get_type_hints(type(cfg))
        for f in dataclasses.fields(cfg):
            value, hint = getattr(cfg, f.name), hints.get(f.name)
            is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            allowed = typing.get_args(hint) if is_union else (hint,)
            if isinstance(value, str) and any(typing.get_origin(t) is list or t is list for t in allowed):
                # YAML `lora_target_modules: q_proj` would otherwise be split into characters
                raise ValueError(f"Recipe key {f.name!r} is a list: write [{value}], got the bare string {value!r}.")
            simple = [t for t in allowed if t in (int, float, bool, str)]
            if value is None or not simple or len(simple) != len([t for t in allowed if t is not type(None)]):
                continue
            ok = any(isinstance(value, t) and not (t is not bool and isinstance(value, bool)) for t in simple)
            ok |= float in simple and isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                names = "/".join(t.__name__ for t in simple)
                raise ValueError(f"Recipe key {f.name!r} must be {names}, got {value!r} ({type(value).__name__}).")


def looks_local(name: str) -> bool:
    """A path rather than a Hub id (`org/name`): absolute, ./ ../ ~, deeper than org/name, or its first part is a
    folder here (outputs/stage1)."""
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return True
    return "/" in name and os.path.isdir(name.split("/")[0])


def check_local_paths(model_args, data_args) -> None:
    """A local path that does not exist gets "no such folder" now, not a Hub error about repo ids after loading."""
    named = [(key, getattr(model_args, key)) for key in ("vision_name", "llm_name", "init_from")]
    named += [("datasets[].path", cfg.path) for cfg in data_args.datasets or []]
    for key, value in named:
        if value and looks_local(value) and not os.path.exists(os.path.expanduser(value)):
            raise ValueError(f"Recipe key {key!r}: no such folder {value!r} (cwd: {os.getcwd()}).")


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, SFTConfig]:
    if argv and argv[0].endswith((".yaml", ".yml")):  # `run_sft.py recipe.yaml [--flag value ...]`
        argv = ["--config", argv[0], *argv[1:]]
    if "--config" in argv:
        path = argv[argv.index("--config") + 1]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Recipe {path!r} does not exist (cwd: {os.getcwd()}).")
    parser = TrlParser((ModelArguments, DataArguments, SFTConfig), exit_on_error=False)
    try:
        model_args, data_args, training_args = parser.parse_args_and_config(argv)
    except argparse.ArgumentError as error:  # e.g. `lora_r: eight`; argparse would sys.exit() from inside main()
        raise ValueError(f"Bad recipe or flag value: {error}.") from error
    check_types(model_args, data_args, training_args)
    if not data_args.datasets:
        raise ValueError("The recipe lists no `datasets`; add e.g. `datasets: [{path: data/synthetic}]`.")
    if not (model_args.init_from or (model_args.vision_name and model_args.llm_name)):
        raise ValueError("Set `init_from` (a previous stage's output) or both `vision_name` and `llm_name`.")
    if model_args.llm_full and model_args.lora_r:
        raise ValueError("`llm_full: true` and `lora_r > 0` conflict: pick full fine-tuning or LoRA.")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.init_from:
        raise ValueError("QLoRA/8-bit loads a saved MiniLlava: set `init_from` to the stage-1 output.")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not (training_args.bf16 or training_args.fp16):
        # SFTTrainer casts a quantized model's trainable weights (LoRA, the projector copy) to bfloat16, while PEFT's
        # kbit preparation keeps the vision tower in float32: only autocast makes the two meet (else step 1 fails).
        raise ValueError("QLoRA/8-bit needs mixed precision: set `bf16: true` (with `use_cpu: true` on a CPU).")
    if transformers.integrations.is_deepspeed_zero3_enabled() and not model_args.init_from:
        raise ValueError(
            "DeepSpeed ZeRO-3 needs `init_from` (a saved MiniLlava, e.g. the stage-1 output): from_backbones builds "
            "its skeleton on the meta device, which ZeRO-3's sharded init cannot fill. Run stage 1 with DDP or ZeRO-2."
        )
    # Our collator builds the batches: TRL must neither re-tokenise nor drop the raw columns. `max_length` goes to
    # our collator (longer rows are dropped and counted before training, never truncated through an image).
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    return model_args, data_args, training_args


def load_mixture(data_args: DataArguments, split_of=lambda cfg: cfg.split, limit=None):
    """Concatenate the mixture's datasets; `fraction`s follow TRL's (shares of the mixture, no oversampling)."""
    import datasets

    parts, fingerprints = [], {}
    for cfg in data_args.datasets:
        dd = load_dataset_dir(cfg.path, name=cfg.name) if cfg.name else load_dataset_dir(cfg.path)
        split = split_of(cfg)
        if split not in dd:
            raise ValueError(f"Dataset {cfg.path!r} has no split {split!r}; it has {list(dd)}.")
        ds = dd[split].select_columns(cfg.columns) if cfg.columns else dd[split]
        parts.append(ds)
        manifest = os.path.join(cfg.path, "manifest.json")
        if os.path.exists(manifest):
            with open(manifest) as f:
                fingerprints[cfg.path] = json.load(f).get("fingerprint")
    fractions = [cfg.fraction for cfg in data_args.datasets]
    if any(f is not None for f in fractions):
        weights = [(f or 0.0) / sum(f or 0.0 for f in fractions) for f in fractions]
        total = min(len(ds) / w for ds, w in zip(parts, weights) if w > 0)
        parts = [ds.select(range(min(len(ds), round(w * total)))) for ds, w in zip(parts, weights)]
    mixed = datasets.concatenate_datasets([p for p in parts if len(p)])
    if limit is not None:
        mixed = mixed.select(range(min(limit, len(mixed))))
    return mixed, fingerprints


def build_model(args: ModelArguments, training_args: SFTConfig):
    dtype = getattr(torch, args.dtype)
    if args.load_in_4bit or args.load_in_8bit:  # parse_args checked that init_from is set
        quant = BitsAndBytesConfig(
            load_in_4bit=args.load_in_4bit,
            load_in_8bit=args.load_in_8bit,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            # never quantized; transformers 5 matches these from the start of the module path, so full paths
            llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"],
        )
        device_map = "cpu" if training_args.use_cpu else {"": int(os.environ.get("LOCAL_RANK", 0))}
        model = MiniLlavaForConditionalGeneration.from_pretrained(
            args.init_from, dtype=dtype, quantization_config=quant, device_map=device_map
        )
    elif args.init_from:
        model = MiniLlavaForConditionalGeneration.from_pretrained(
            args.init_from, dtype=dtype, attn_implementation=args.attn_implementation
        )
    else:
        model = MiniLlavaForConditionalGeneration.from_backbones(
            args.vision_name,
            args.llm_name,
            dtype=dtype,
            attn_implementation=args.attn_implementation,
            projector_type=args.projector_type,
            perceiver_num_latents=args.perceiver_num_latents,
            pixel_shuffle_factor=args.pixel_shuffle_factor,
            vision_feature_layer=args.vision_feature_layer,
            image_position=args.image_position or "user_turn",
        )
    if args.init_from and args.image_position:  # the layout is the processor's; the config records it
        model.config.image_position = args.image_position
    return model, build_processor(args)[0]


def build_processor(args: ModelArguments):
    """(processor, model config) without building the model, so the data can be checked first."""
    if args.init_from:
        processor = MiniLlavaProcessor.from_pretrained(args.init_from)
        if args.image_position:
            processor.set_image_position(args.image_position)
        return processor, MiniLlavaConfig.from_pretrained(args.init_from)
    config = MiniLlavaConfig.from_backbones(
        args.vision_name,
        args.llm_name,
        projector_type=args.projector_type,
        perceiver_num_latents=args.perceiver_num_latents,
        pixel_shuffle_factor=args.pixel_shuffle_factor,
        vision_feature_layer=args.vision_feature_layer,
        image_position=args.image_position or "user_turn",
    )
    return MiniLlavaProcessor.from_backbones(args.vision_name, args.llm_name, config=config), config


def build_collator(args: ModelArguments, data_args, training_args, processor, config) -> MiniLlavaDataCollator:
    """The training collator: the model's stop tokens, and `max_length` (the recipe's, TRL's default 1024 when
    unset; the LLM's context when set to null) as the longest row kept."""
    source = args.init_from or args.llm_name
    try:
        stop_ids = GenerationConfig.from_pretrained(source).eos_token_id  # what the model will stop on
    except OSError:  # an LLM without generation_config.json: the tokenizer's eos
        stop_ids = processor.tokenizer.eos_token_id
    max_length = training_args.max_length or config.text_config.max_position_embeddings
    return MiniLlavaDataCollator(
        processor,
        stop_token_ids=stop_ids if isinstance(stop_ids, list) else [stop_ids],
        max_skip_fraction=data_args.max_skip_fraction,
        max_length=max_length,
    )


def check_data(splits: dict, collator, training_args, data_args) -> dict:
    """Every row of every split checked with the collator's rules before any model is built; bad rows dropped,
    counted by reason and listed (ids) in OUTPUT_DIR/data_check.json; refuses to start above max_skip_fraction."""
    processor = collator.processor
    settings = "|".join(
        str(x)
        for x in (processor.chat_template, processor.num_image_tokens, processor.image_token_id,
                  collator.max_length, sorted(collator.stop_token_ids))
    )  # fmt: skip
    cache_dir = os.path.join(training_args.output_dir, "data_check")
    checked, reports = {}, []
    for name, ds in splits.items():
        if ds is None:
            checked[name] = None
            continue
        num_proc = max(1, training_args.dataloader_num_workers)
        checked[name], report = check_rows(
            ds, collator.check_row, name=name, settings=settings, cache_dir=cache_dir, num_proc=num_proc
        )
        reports.append(report)
    report_path = os.path.join(training_args.output_dir, "data_check.json")
    if training_args.process_index == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(report_path, "w") as f:
            json.dump({"max_length": collator.max_length, "splits": reports}, f, indent=2)
    enforce_skip_fraction(reports, data_args.max_skip_fraction, report_path)
    return checked


def apply_train_plan(model, args: ModelArguments, gradient_checkpointing: bool):
    """Freeze everything, then unfreeze what the recipe declares; LoRA goes on the LLM only."""
    model.requires_grad_(False)
    inner = model.model
    inner.multi_modal_projector.requires_grad_(args.train_projector)
    inner.vision_tower.requires_grad_(args.train_vision)
    layers = inner.language_model.layers
    top_k = list(range(len(layers) - args.llm_top_k_blocks, len(layers))) if args.llm_top_k_blocks else []
    if args.llm_full:
        inner.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    for i in top_k:
        layers[i].requires_grad_(True)
    if args.load_in_4bit or args.load_in_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        disable_bnb_cpu_repack(model)
    if not args.lora_r:
        return model
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:  # before get_peft_model, so PEFT wires input grads for checkpointed blocks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_layers = [str(i) for i in range(len(layers)) if i not in top_k]
    config = LoraConfig(
        # CAUSAL_LM: the adapter loads with AutoPeftModelForCausalLM (our config's auto_map has AutoModelForCausalLM);
        # without a task type PEFT records our own package as `auto_mapping`, which AutoPeft refuses to import.
        task_type="CAUSAL_LM",
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        # A regex restricted to the LLM (a plain list would also hit SigLIP's q/k/v) and to the non-top-k blocks.
        target_modules=rf".*language_model\.layers\.({'|'.join(lora_layers)})\..*\.({'|'.join(args.lora_target_modules)})",
        # Saved with the adapter, so a checkpoint is whole: the projector and fully-trained blocks.
        modules_to_save=(["multi_modal_projector"] if args.train_projector else [])
        + [f"language_model.layers.{i}" for i in top_k]
        + (["vision_tower"] if args.train_vision else []),
    )
    return get_peft_model(model, config)


def portable_reference(name_or_path: str) -> str:
    """How saved artefacts name a model they came from, never by an absolute path of this machine: a Hub id or a
    relative path as given; an absolute path relative to the launch directory when it lies below it (e.g.
    outputs/offline/stage1 from the repo root), else by its folder name. PEFT (adapter_config.json's
    base_model_name_or_path, read by AutoPeftModelForCausalLM) resolves a local name against the cwd, so an adapter
    loads from the directory the run was launched from, or from the folder holding its base."""
    if not name_or_path or not os.path.isabs(name_or_path):
        return name_or_path
    relative = os.path.relpath(name_or_path)
    return relative if not relative.startswith("..") else os.path.basename(os.path.normpath(name_or_path))


def use_portable_names(model) -> None:
    """The names `save_pretrained` copies into config.json (the sub-configs' `_name_or_path`: the backbones), into
    adapter_config.json and into PEFT's and TRL's model cards (`base_model`: the model's `name_or_path`)."""
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config.name_or_path = portable_reference(config.name_or_path)
    model.name_or_path = model.config.name_or_path


def disable_bnb_cpu_repack(model) -> None:
    """bitsandbytes 0.50 repacks 4-bit weights on the first CPU no_grad forward, after which training forwards
    fail (STACK.md); turning the repack off keeps eval + train interleaving working on CPU."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def describe_train_plan(model) -> str:
    """One line per top-level module: TRAINABLE / PARTIAL / FROZEN with parameter counts (tied weights once)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lines = []
    modules = {**dict(base.model.named_children()), "lm_head": base.lm_head}
    seen = set()
    for name, module in modules.items():
        # PEFT's modules_to_save trains a copy and keeps the frozen `original_module`: count the copy only.
        params = [p for n, p in module.named_parameters() if "original_module." not in n and id(p) not in seen]
        seen.update(id(p) for p in params)
        numel = [getattr(p, "ds_numel", p.numel()) for p in params]  # ZeRO-3 leaves each rank an empty shard
        total, trainable = sum(numel), sum(n for n, p in zip(numel, params) if p.requires_grad)
        state = "TRAINABLE" if trainable == total and total else "PARTIAL" if trainable else "FROZEN"
        state = "TIED" if not total else state  # lm_head sharing the input embeddings, counted there
        lines.append(f"  {name:<24} {state:<10} {trainable:>14,} / {total:>14,}")
    return "Train plan:\n" + "\n".join(lines)


def run_info(model_args, data_args, training_args, fingerprints) -> dict:
    commit, dirty = git_state(os.path.dirname(os.path.abspath(__file__)))
    import importlib.metadata as md

    packages = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed"]
    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "command": sys.argv,
        "model_args": dataclasses.asdict(model_args),
        "data_args": dataclasses.asdict(data_args),
        "training_args": json.loads(training_args.to_json_string()),
        "git_commit": commit,
        "git_dirty": dirty,
        "dataset_fingerprints": fingerprints,
        "packages": versions,
        "seed": training_args.seed,
    }


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)
    check_local_paths(model_args, data_args)  # here, not in parse_args: recipes name outputs of earlier stages
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING)
    if "mlflow" in (training_args.report_to or []) and "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + os.path.abspath(
            os.path.join(training_args.output_dir, "mlflow.db")
        )  # offline, next to the run
    if training_args.deepspeed and training_args.use_cpu and torch.distributed.is_initialized():
        # On GPUs accelerate starts deepspeed.comm; on CPU it does not, and ZeRO-3's zero.Init inside from_pretrained
        # then sees world size 1 and fails ("train_batch_size is not equal to ... 16 != 8 * 1 * 1").
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    set_seed(training_args.seed)

    train_ds, fingerprints = load_mixture(data_args, limit=data_args.max_train_samples)
    eval_ds = None
    if data_args.eval_split and training_args.eval_strategy != "no":
        eval_split = data_args.eval_split
        eval_ds, _ = load_mixture(data_args, split_of=lambda cfg: eval_split, limit=data_args.max_eval_samples)

    processor, config = build_processor(model_args)
    collator = build_collator(model_args, data_args, training_args, processor, config)
    checked = check_data({"train": train_ds, "eval": eval_ds}, collator, training_args, data_args)
    train_ds, eval_ds = checked["train"], checked["eval"]

    model, _ = build_model(model_args, training_args)  # the same processor again; the checked one is kept
    use_portable_names(model)
    model = apply_train_plan(model, model_args, training_args.gradient_checkpointing)
    if training_args.gradient_checkpointing:
        training_args.gradient_checkpointing_kwargs = training_args.gradient_checkpointing_kwargs or {
            "use_reentrant": False
        }
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=processor,
        data_collator=collator,
        callbacks=[MarkCompleteCheckpoints()],
    )
    if trainer.is_world_process_zero():
        logger.info(describe_train_plan(trainer.model))
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "run_info.json"), "w") as f:
            json.dump(run_info(model_args, data_args, training_args, fingerprints), f, indent=2, default=str)

    resume = training_args.resume_from_checkpoint
    if resume in (True, "true", "True", "last"):
        resume = last_complete_checkpoint(training_args.output_dir)
        logger.info(f"Resuming from {resume}" if resume else "No complete checkpoint to resume from; starting fresh.")
    result = trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model()  # every rank: ZeRO-3 gathers the shards
    summary = summarize(trainer, result, collator, len(train_ds))
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        if model_args.lora_r and not (model_args.load_in_4bit or model_args.load_in_8bit):
            merged = trainer.model.merge_and_unload()  # a whole model for run_eval, the demo and the Hub
            merged.save_pretrained(os.path.join(training_args.output_dir, "merged"))
            processor.save_pretrained(os.path.join(training_args.output_dir, "merged"))
        with open(os.path.join(training_args.output_dir, "train_results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        logger.info(f"Artefacts in {os.path.abspath(training_args.output_dir)}: {json.dumps(summary)}")
    return summary


def summarize(trainer, result, collator, n_train: int) -> dict:
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return {
        "first_loss": losses[0][1] if losses else math.nan,
        "last_loss": losses[-1][1] if losses else math.nan,
        "losses": losses,
        "global_step": trainer.state.global_step,
        "train_runtime": result.metrics.get("train_runtime"),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_rows": n_train,
        "collator": dict(collator.stats),
        "transformers": transformers.__version__,
    }


if __name__ == "__main__":
    main()
