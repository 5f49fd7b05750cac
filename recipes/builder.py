"""Parsed recipe -> a ready SFTTrainer: the data mixture (checked row by row before any model is built), the processor
and collator, the model with the train plan's freezing (and k-bit preparation), LoRA handed to SFTTrainer as its
`peft_config`, and the callbacks that keep checkpoints whole and record provenance. `train` runs it and saves."""

import errno
import json
import logging
import os

import torch
from transformers import BitsAndBytesConfig, GenerationConfig, set_seed
from trl import SFTConfig, SFTTrainer

from data_scripts.check_rows import check_rows, enforce_skip_fraction
from data_scripts.schema import load_dataset_dir
from modeling_minillava import MiniLlavaConfig, MiniLlavaForConditionalGeneration
from processing import MiniLlavaProcessor
from processing.collator import MiniLlavaDataCollator

from .arguments import DataArguments, ModelArguments, check_local_paths, parse_recipe
from .checkpoints import CheckpointGuard, out_of_space, resolve_resume
from .provenance import Provenance, save_artefacts, use_portable_names
from .trainers import make_trainer, row_check

logger = logging.getLogger(__name__)


def load_mixture(data_args: DataArguments, split_of=lambda cfg: cfg.split, limit=None):
    """(rows, {path: fingerprint}): the mixture's datasets concatenated; `fraction`s follow TRL's rule (shares of the
    mixture, no oversampling)."""
    import datasets

    parts, fingerprints = [], {}
    for cfg in data_args.datasets:
        dd = load_dataset_dir(cfg.path, name=cfg.name, data_dir=cfg.data_dir, data_files=cfg.data_files)
        split = split_of(cfg)
        if split not in dd:
            raise ValueError(f"Dataset {cfg.path!r} has no split {split!r}; it has {list(dd)}.")
        parts.append(dd[split].select_columns(cfg.columns) if cfg.columns else dd[split])
        manifest = os.path.join(cfg.path, "manifest.json")
        if os.path.exists(manifest):
            with open(manifest) as f:
                fingerprints[cfg.path] = json.load(f).get("fingerprint")
        else:  # a Hub dataset: its Arrow fingerprint
            fingerprints[cfg.path] = dd[split]._fingerprint
    fractions = [cfg.fraction for cfg in data_args.datasets]
    if all(f is not None for f in fractions):  # all or none (check_mixture)
        weights = [f / sum(fractions) for f in fractions]
        total = min(len(ds) / w for ds, w in zip(parts, weights) if w > 0)
        parts = [ds.select(range(min(len(ds), round(w * total)))) for ds, w in zip(parts, weights)]
    mixed = datasets.concatenate_datasets([p for p in parts if len(p)])
    if limit is not None:
        mixed = mixed.select(range(min(limit, len(mixed))))
    return mixed, fingerprints


def build_processor(args: ModelArguments):
    """(processor, model config) without building the model, so the data can be checked first."""
    if args.init_from:
        processor = MiniLlavaProcessor.from_pretrained(args.init_from)
        config = MiniLlavaConfig.from_pretrained(args.init_from)
        if args.image_position:
            processor.set_image_position(args.image_position)
        if args.max_image_tokens is not None:  # a budget, not the architecture: this stage may change it
            if config.image_grid_pinpoints is None:
                raise ValueError(f"max_image_tokens={args.max_image_tokens}: {args.init_from} has no AnyRes grids.")
            processor.max_image_tokens = config.max_image_tokens = args.max_image_tokens
        return processor, config
    config = MiniLlavaConfig.from_backbones(args.vision_name, args.llm_name, **architecture(args))
    return MiniLlavaProcessor.from_backbones(args.vision_name, args.llm_name, config=config), config


def architecture(args: ModelArguments) -> dict:
    return dict(
        projector_type=args.projector_type,
        perceiver_num_latents=args.perceiver_num_latents,
        pixel_shuffle_factor=args.pixel_shuffle_factor,
        vision_feature_layer=args.vision_feature_layer,
        image_position=args.image_position or "user_turn",
        max_tiles=args.max_tiles,
        max_image_tokens=args.max_image_tokens,
    )


def build_collator(args: ModelArguments, data_args, training_args, processor, config) -> MiniLlavaDataCollator:
    """The training collator: the model's stop tokens; `max_length` (the recipe's, TRL's default 1024 when unset, the
    LLM's context when null) with the recipe's `too_long` policy; `packing`/`padding_free` as padding-free batches."""
    source = args.init_from or args.llm_name
    try:
        stop_ids = GenerationConfig.from_pretrained(source).eos_token_id  # what the model will stop on
    except OSError:  # an LLM without generation_config.json: the tokenizer's eos
        stop_ids = processor.tokenizer.eos_token_id
    max_length = getattr(training_args, "max_length", None) or config.text_config.max_position_embeddings
    return MiniLlavaDataCollator(
        processor,
        stop_token_ids=stop_ids if isinstance(stop_ids, list) else [stop_ids],
        max_skip_fraction=data_args.max_skip_fraction,
        max_length=max_length,
        **collator_options(data_args, training_args),
    )


def collator_options(data_args, training_args) -> dict:
    """Recipe keys the collator honours beyond max_length. TRL refuses `packing`/`padding_free` for vision datasets
    and custom collators, so our collator does it (whole rows of a batch in one sequence, TRL's padding_free)."""
    options = {}
    if data_args.too_long != "skip":
        options["too_long"] = data_args.too_long
    if getattr(training_args, "packing", False) or getattr(training_args, "padding_free", False):
        options["padding_free"] = True
    return options


def check_data(splits: dict, collator, training_args, data_args, check_row=None) -> dict:
    """Every row of every split checked with the collator's rules (`check_row`: a trainer's own form of them) before
    any model is built; bad rows dropped, counted by reason and listed (ids) in OUTPUT_DIR/data_check.json; refuses to
    start above max_skip_fraction."""
    processor = collator.processor
    # Everything a verdict depends on: a cached verdict is reused only under the same rules (AnyRes grids and the
    # token budget decide how many placeholders a row takes).
    grids = getattr(processor.image_processor, "image_grid_pinpoints", None) if processor.anyres else None
    settings = "|".join(
        str(x)
        for x in (
            processor.chat_template,
            processor.num_image_tokens,
            processor.image_token_id,
            grids,
            processor.max_image_tokens,
            collator.max_length,
            getattr(check_row, "__qualname__", None),  # a preference row is checked in another form
            sorted(collator.stop_token_ids),
            collator.too_long,
        )
    )
    cache_dir = os.path.join(training_args.output_dir, "data_check")
    checked, reports = {}, []
    for name, ds in splits.items():
        if ds is None:
            checked[name] = None
            continue
        num_proc = max(1, training_args.dataloader_num_workers)
        checked[name], report = check_rows(
            ds,
            check_row or collator.check_row,
            name=name,
            settings=settings,
            cache_dir=cache_dir,
            num_proc=num_proc,
            write_cache=training_args.process_index == 0,  # ranks share output_dir: one writer
        )
        reports.append(report)
    report_path = os.path.join(training_args.output_dir, "data_check.json")
    if training_args.process_index == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(report_path, "w") as f:
            json.dump({"max_length": collator.max_length, "splits": reports}, f, indent=2)
    enforce_skip_fraction(reports, data_args.max_skip_fraction, report_path)
    return checked


def build_model(args: ModelArguments, training_args: SFTConfig):
    """The MiniLlava to train: from a previous stage (`init_from`, optionally quantized) or from two backbones."""
    dtype = getattr(torch, args.dtype)
    if args.load_in_4bit or args.load_in_8bit:  # check_recipe made sure init_from is set
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
            args.init_from,
            dtype=dtype,
            quantization_config=quant,
            device_map=device_map,
            attn_implementation=args.attn_implementation,
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
            **architecture(args),
        )
    if args.init_from and args.image_position:  # the layout is the processor's; the config records it
        model.config.image_position = args.image_position
    if args.init_from and args.max_image_tokens is not None:
        model.config.max_image_tokens = args.max_image_tokens
    use_portable_names(model)
    return model


def top_k_blocks(model, args: ModelArguments) -> list[int]:
    n = len(model.model.language_model.layers)
    return list(range(n - args.llm_top_k_blocks, n)) if args.llm_top_k_blocks else []


def apply_train_plan(model, args: ModelArguments, gradient_checkpointing: bool = False):
    """Freeze everything, then unfreeze what the recipe declares (k-bit preparation for QLoRA). LoRA is not applied
    here: `lora_config` goes to SFTTrainer, whose PEFT path handles ZeRO-3, QLoRA and gradient checkpointing."""
    model.requires_grad_(False)
    inner = model.model
    inner.multi_modal_projector.requires_grad_(args.train_projector)
    inner.vision_tower.requires_grad_(args.train_vision)
    if args.llm_full:
        inner.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    for i in top_k_blocks(model, args):
        inner.language_model.layers[i].requires_grad_(True)
    if args.load_in_4bit or args.load_in_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        disable_bnb_cpu_repack(model)
    return model


def lora_config(model, args: ModelArguments):
    """The recipe's LoRA as a PEFT config for SFTTrainer(peft_config=...), or None when `lora_r` is 0."""
    if not args.lora_r:
        return None
    from peft import LoraConfig

    top_k = top_k_blocks(model, args)
    lora_layers = [str(i) for i in range(len(model.model.language_model.layers)) if i not in top_k]
    return LoraConfig(
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


def disable_bnb_cpu_repack(model) -> None:
    """bitsandbytes 0.50, on CPUs with AVX512-BF16, repacks 4-bit weights on the first no_grad forward; every later
    training forward then fails ("a view of a leaf Variable that requires grad is being used in an in-place
    operation"). Turning the repack off keeps eval + train interleaving working on CPU."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def prepare_environment(training_args: SFTConfig) -> None:
    """MLflow tracks offline next to the run unless told otherwise; DeepSpeed's comm starts on CPU too."""
    if "mlflow" in (training_args.report_to or []) and "MLFLOW_TRACKING_URI" not in os.environ:
        tracking = os.path.abspath(os.path.join(training_args.output_dir, "mlflow.db"))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tracking}"
    if training_args.deepspeed and training_args.use_cpu and torch.distributed.is_initialized():
        # On GPUs accelerate starts deepspeed.comm; on CPU it does not, and ZeRO-3's zero.Init inside from_pretrained
        # then sees world size 1 and fails ("train_batch_size is not equal to ... 16 != 8 * 1 * 1").
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: SFTConfig) -> SFTTrainer:
    """The whole run but `train()`: data loaded and checked, model built under the train plan, LoRA via
    SFTTrainer's own PEFT path, checkpoint guard and provenance attached (`trainer.guard`, `trainer.provenance`)."""
    check_local_paths(model_args, data_args)  # here, not at parse time: recipes name outputs of earlier stages
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)  # before any slow step
    prepare_environment(training_args)
    provenance = Provenance(model_args, data_args, training_args)  # before the collator options below touch args
    set_seed(training_args.seed)
    train_ds, fingerprints = load_mixture(data_args, limit=data_args.max_train_samples)
    eval_ds = None
    if data_args.eval_split and training_args.eval_strategy != "no":
        eval_split = data_args.eval_split
        eval_ds, _ = load_mixture(data_args, split_of=lambda cfg: eval_split, limit=data_args.max_eval_samples)

    processor, config = build_processor(model_args)
    collator = build_collator(model_args, data_args, training_args, processor, config)
    check_row = row_check(model_args.trainer, collator.check_row)
    checked = check_data({"train": train_ds, "eval": eval_ds}, collator, training_args, data_args, check_row)
    if isinstance(training_args, SFTConfig):  # our collator packs (collator_options); TRL would refuse both keys
        training_args.packing = training_args.padding_free = False
    if training_args.gradient_checkpointing and not training_args.gradient_checkpointing_kwargs:
        training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}

    model = apply_train_plan(build_model(model_args, training_args), model_args, training_args.gradient_checkpointing)
    peft_config = lora_config(model, model_args)
    trainer, collator = make_trainer(
        model_args.trainer, model, model_args, training_args, checked, processor, collator, peft_config
    )
    provenance.attach(trainer, datasets=fingerprints, train_rows=len(checked["train"]))
    trainer.guard = CheckpointGuard(trainer, collator)  # manifests, rotation, counters that survive a resume
    trainer.guard.resume_from = resume
    trainer.add_callback(trainer.provenance)  # before the guard: its files are in each checkpoint's manifest
    trainer.add_callback(trainer.guard)
    if trainer.is_world_process_zero():
        logger.info(provenance.describe_train_plan())
    return trainer


def train(trainer: SFTTrainer) -> dict:
    """Train (resuming as the recipe says), then save the model folder(s) with their provenance; the summary."""
    resume = trainer.guard.resume_from
    if resume:
        trainer.guard.restore(resume)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()  # every rank: ZeRO-3 gathers the shards
        return save_artefacts(trainer, result, resumed_from=resume)
    except Exception as error:  # a full disk reads as torch's "unexpected pos N vs M": say what it is
        if message := out_of_space(error, trainer.args.output_dir):
            raise OSError(errno.ENOSPC, message) from error
        raise


def run(argv: list[str]) -> dict:
    """The training entry point (`python run_sft.py ARGV` is this): parse the recipe, log INFO on the main process
    only, build the trainer, train and save; the summary."""
    model_args, data_args, training_args = parse_recipe(argv)
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING)
    return train(build_trainer(model_args, data_args, training_args))
