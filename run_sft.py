"""Train Mini-LLaVA on TRL's SFTTrainer from a YAML recipe; CLI flags override the recipe.

    accelerate launch run_sft.py recipes/stage2.yaml --learning_rate 1e-4
    python run_sft.py recipes/stage1.yaml

This file owns policy: which modules train (the train plan), which data, where artefacts go. The model, processor
and collator know nothing of it.
"""

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import types
import typing
from collections import Counter
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
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"  # the manifest: written last; resume trusts a checkpoint it vouches for
COUNTERS_FILE = "run_counters_rank{rank}.json"  # num_tokens + collator stats, per process (the collator's are)
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


def checkpoint_step(path: str) -> int | None:
    """N for a checkpoint-N folder, else None."""
    name = os.path.basename(os.path.normpath(path))
    step = name.removeprefix("checkpoint-")
    return int(step) if step != name and step.isdigit() else None


def list_checkpoints(output_dir: str) -> list[str]:
    """The checkpoint-N folders of `output_dir`, lowest step first."""
    if not os.path.isdir(output_dir):
        return []
    paths = [os.path.join(output_dir, name) for name in os.listdir(output_dir)]
    return sorted((p for p in paths if checkpoint_step(p) is not None and os.path.isdir(p)), key=checkpoint_step)


def write_json_atomically(path: str, obj) -> None:
    """Temporary name, fsync, rename: a kill leaves the old file or the whole new one, never half of it."""
    with open(f"{path}.tmp", "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)


def write_manifest(checkpoint: str, global_step: int) -> None:
    """COMPLETE_MARKER lists every file of the checkpoint with its size and is written last: being there says the save
    finished, its content that nothing went missing or was cut short since. Sizes rather than hashes: they catch what
    a kill or a full disk leaves, for free; a hash re-reads the whole checkpoint (for a 7B run, tens of GB of
    optimizer state) at every save."""
    files = {}
    for root, _, names in os.walk(checkpoint):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), checkpoint)
            if not relative.startswith(COMPLETE_MARKER):
                files[relative] = os.path.getsize(os.path.join(root, name))
    manifest = {"global_step": global_step, "files": dict(sorted(files.items()))}
    write_json_atomically(os.path.join(checkpoint, COMPLETE_MARKER), manifest)


def checkpoint_problem(checkpoint: str) -> str | None:
    """Why `checkpoint` is not whole, or None when every file its manifest lists is there at its saved size."""
    try:
        with open(os.path.join(checkpoint, COMPLETE_MARKER)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return f"no {COMPLETE_MARKER} (interrupted while saving or deleting it)"
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return f"{COMPLETE_MARKER} holds no manifest (an older run_sft's empty marker): its files cannot be checked"
    for relative, size in manifest["files"].items():
        path = os.path.join(checkpoint, relative)
        if not os.path.isfile(path):
            return f"{relative} is missing ({size} bytes when saved)"
        if os.path.getsize(path) != size:
            return f"{relative} has {os.path.getsize(path)} bytes, {size} when saved (cut short or overwritten)"
    step = checkpoint_step(checkpoint)
    if step is not None and manifest.get("global_step") != step:
        return f"its manifest is for step {manifest.get('global_step')} (a copied or renamed folder)"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """Newest whole checkpoint-N (see checkpoint_problem); each newer one skipped is named in the log, with why."""
    for checkpoint in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning(f"Not resuming from {checkpoint}: {problem}.")
    return None


def delete_checkpoint(checkpoint: str) -> None:
    """Manifest first: a kill while deleting leaves a leftover that resume skips, never a vouched-for folder with files
    gone."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(checkpoint, COMPLETE_MARKER))
    shutil.rmtree(checkpoint, ignore_errors=True)


def rotate_checkpoints(output_dir: str, save_total_limit: int | None, protect: list[str | None]) -> None:
    """Keep the `save_total_limit` newest whole checkpoints, those in `protect` (the one just saved, the best one)
    always among them; delete the rest and every leftover (no valid manifest), which never counts against the limit.
    Called only after the newest checkpoint's manifest is written, so the newest whole checkpoint is never deleted."""
    if not save_total_limit or save_total_limit <= 0:
        return
    problems = {c: checkpoint_problem(c) for c in list_checkpoints(output_dir)}
    whole = [c for c, problem in problems.items() if problem is None]
    wanted = {os.path.normpath(p) for p in protect if p}
    protected = [c for c in whole if os.path.normpath(c) in wanted]
    others = [c for c in whole if c not in protected]
    kept = set(protected + others[len(others) - max(save_total_limit - len(protected), 0) :])
    for checkpoint, problem in problems.items():
        if checkpoint not in kept:
            logger.info(f"Deleting {checkpoint} ({f'leftover: {problem}' if problem else 'save_total_limit'}).")
            delete_checkpoint(checkpoint)


def disown_later_checkpoints(output_dir: str, global_step: int) -> None:
    """A run starting at `global_step` (0, or the step it resumed from) writes its own checkpoints for later steps; any
    on disk belong to an abandoned run. Their manifests go now, so resume never picks one and a kill while the Trainer
    overwrites one never leaves an old manifest vouching for a mix of old and new files of equal sizes."""
    for checkpoint in list_checkpoints(output_dir):
        marker = os.path.join(checkpoint, COMPLETE_MARKER)
        if checkpoint_step(checkpoint) > global_step and os.path.exists(marker):
            logger.warning(f"{checkpoint} is later than step {global_step}, where this run starts: no longer trusted.")
            os.remove(marker)


def stats_minus(stats: dict, other: dict) -> dict:
    """`stats - other` for the collator's counters (ints, and per-reason dicts whose zero entries are dropped)."""
    out = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            out[key] = {k: n for k, n in stats_minus(value, other.get(key, {})).items() if n}
        else:
            out[key] = value - other.get(key, 0)
    return out


class StatsBeforeEachBatch:
    """The collator as the Trainer calls it, keeping its stats from before the latest batch: accelerate's
    DataLoaderShard collates one batch ahead of the step it trains (to see the epoch's end coming), and a resumed run
    collates that batch again, so a mid-epoch checkpoint must not count it."""

    def __init__(self, collator):
        self.collator, self.before = collator, None

    def __call__(self, rows):
        self.before = copy.deepcopy(self.collator.stats)
        return self.collator(rows)


class CheckpointGuard(TrainerCallback):
    """Checkpoints that cannot be lost, and counters that continue across a resume.

    A checkpoint is whole when its manifest (`write_manifest`, written once the Trainer and every rank are done)
    matches the folder; resume trusts nothing else. Rotation happens here, after the manifest: the Trainer rotates at
    the end of `_save_checkpoint`, before any callback runs, so a kill there could leave the previous checkpoint
    deleted and the new one unmarked. The Trainer offers no hook in between; overriding `_save_checkpoint` would copy
    ~70 lines of it, so its rotation is switched off for the run (`save_total_limit=None` from on_train_begin to
    on_train_end) and `rotate_checkpoints` runs in `on_save` instead; the Trainer's saving itself is untouched.
    TRL's token count and the collator's stats restart at 0 in a new process: each process saves its own next to the
    manifest (COUNTERS_FILE) and `restore` puts them back before `trainer.train(resume_from_checkpoint=...)`.
    """

    def __init__(self, trainer, collator):
        self.trainer, self.collator = trainer, collator
        self.batches = StatsBeforeEachBatch(collator)
        trainer.data_collator = self.batches  # read when train() builds the DataLoader
        self.save_total_limit = None
        self.prefetched = {}  # stats of the batch collated ahead of the step just trained

    def on_train_begin(self, args, state, control, **kwargs):
        self.save_total_limit, args.save_total_limit = args.save_total_limit, None
        if args.should_save:
            disown_later_checkpoints(args.output_dir, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        # The latest collator call fetched the next step's batch, unless the epoch just ended (nothing left to fetch).
        mid_epoch = self.batches.before is not None and not float(state.epoch or 0).is_integer()
        self.prefetched = stats_minus(self.collator.stats, self.batches.before) if mid_epoch else {}

    def on_save(self, args, state, control, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        counters = {
            "global_step": state.global_step,
            "num_tokens": self.trainer._total_train_tokens,  # TRL 1.16 counts here, from 0 in every process
            "collator": stats_minus(self.collator.stats, self.prefetched),
        }
        write_json_atomically(os.path.join(checkpoint, COUNTERS_FILE.format(rank=args.process_index)), counters)
        self.trainer.accelerator.wait_for_everyone()  # every rank's files are on disk before the manifest lists them
        if args.should_save:
            write_manifest(checkpoint, state.global_step)
            rotate_checkpoints(args.output_dir, self.save_total_limit, [checkpoint, state.best_model_checkpoint])

    def on_train_end(self, args, state, control, **kwargs):
        args.save_total_limit = self.save_total_limit

    def restore(self, checkpoint: str) -> None:
        """num_tokens and the collator's stats continue from `checkpoint`'s."""
        path = os.path.join(checkpoint, COUNTERS_FILE.format(rank=self.trainer.args.process_index))
        if not os.path.isfile(path):
            logger.warning(f"No {path}: num_tokens and the collator's stats restart at 0.")
            return
        with open(path) as f:
            counters = json.load(f)
        self.trainer._total_train_tokens = counters["num_tokens"]
        for key, value in counters["collator"].items():
            self.collator.stats[key] = Counter(value) if isinstance(value, dict) else value


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


def check_mixture(data_args) -> None:
    """The mixture keys TRL defines, as TRL reads them, or refused: `fraction` on all datasets or none."""
    fractions = [cfg.fraction for cfg in data_args.datasets]
    if any(f is not None for f in fractions) and any(f is None for f in fractions):
        missing = [cfg.path for cfg in data_args.datasets if cfg.fraction is None]
        raise ValueError(
            f"Recipe key 'fraction' is set for some datasets but not for {missing}; as in TRL, give every dataset of "
            "the mixture a fraction or none."
        )
    if data_args.streaming:
        raise ValueError(
            "Recipe key 'streaming: true' is not supported: every row is checked before training and `fraction`s "
            "need each dataset's size. Set `streaming: false`."
        )
    if data_args.test_split_size is not None:
        raise ValueError(
            "Recipe key 'test_split_size' is not supported: our datasets carry their own validation split; set "
            "`eval_split: validation` (the default) instead."
        )


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
    check_mixture(data_args)
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
        dd = load_dataset_dir(cfg.path, name=cfg.name, data_dir=cfg.data_dir, data_files=cfg.data_files)
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
    if all(f is not None for f in fractions):  # all or none (check_mixture)
        weights = [f / sum(fractions) for f in fractions]
        total = min(len(ds) / w for ds, w in zip(parts, weights) if w > 0)
        parts = [ds.select(range(min(len(ds), round(w * total)))) for ds, w in zip(parts, weights)]
    mixed = datasets.concatenate_datasets([p for p in parts if len(p)])
    if limit is not None:
        mixed = mixed.select(range(min(limit, len(mixed))))
    return mixed, fingerprints


def build_model(args: ModelArguments, training_args: SFTConfig, processor=None):
    """(model, processor); `processor` is one build_processor already made (main checks the data with it first)."""
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
    return model, processor if processor is not None else build_processor(args)[0]


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

    model, processor = build_model(model_args, training_args, processor)
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
    )
    checkpoints = CheckpointGuard(trainer, collator)  # manifests, rotation, counters that survive a resume
    trainer.add_callback(checkpoints)
    if trainer.is_world_process_zero():
        logger.info(describe_train_plan(trainer.model))
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "run_info.json"), "w") as f:
            json.dump(run_info(model_args, data_args, training_args, fingerprints), f, indent=2, default=str)

    resume = training_args.resume_from_checkpoint
    if resume in (True, "true", "True", "last"):
        resume = last_complete_checkpoint(training_args.output_dir)
        logger.info(f"Resuming from {resume}" if resume else "No complete checkpoint to resume from; starting fresh.")
    elif resume and (problem := checkpoint_problem(resume)):
        raise ValueError(
            f"resume_from_checkpoint={resume!r} is not a whole checkpoint: {problem}. Pass `true` to resume from the "
            "newest whole checkpoint in output_dir."
        )
    if resume:
        checkpoints.restore(resume)
    result = trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model()  # every rank: ZeRO-3 gathers the shards
    summary = summarize(trainer, result, collator, len(train_ds), resumed_from=resume or None)
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


def summarize(trainer, result, collator, n_train: int, resumed_from: str | None = None) -> dict:
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
        "train_rows": n_train,
        "num_tokens": getattr(trainer, "_total_train_tokens", None),  # TRL's count, as logged
        "collator": dict(collator.stats),
        "resumed_from": resumed_from,
        "transformers": transformers.__version__,
    }


if __name__ == "__main__":
    main()
