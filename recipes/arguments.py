"""Recipe files + flags -> (ModelArguments, DataArguments, SFTConfig), with every key either honoured or refused at
parse time. Recipes compose: `run_sft.py base.yaml overlay.yaml --flag v` merges the files left to right (mappings
merge key by key, every other value, lists included, is replaced), then the flags win."""

import argparse
import dataclasses
import enum
import os
import types
import typing
from dataclasses import dataclass, field

import transformers
import yaml
from trl import DPOConfig, GRPOConfig, SFTConfig, TrlParser
from trl.scripts.utils import DatasetMixtureConfig

from processing.collator import TOO_LONG_POLICIES

LLM_LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# `trainer:` in a recipe -> the TRL config its training keys parse into (the trainer class is the builder's).
TRAINER_CONFIGS = {"sft": SFTConfig, "dpo": DPOConfig, "grpo": GRPOConfig}
# TrainingArguments fields whose __post_init__ replaces the parsed value by another type (`fsdp: "full_shard"` ->
# True), so their type hint no longer describes the value check_types sees; TrainingArguments validates them itself.
CONVERTED_AFTER_PARSING = {"fsdp"}
# ModelArguments that only apply when the model is built from the backbones (init_from's config.json fixes them)
ARCHITECTURE_KEYS = (
    "vision_name", "llm_name", "projector_type", "perceiver_num_latents", "pixel_shuffle_factor",
    "vision_feature_layer", "max_tiles",
)  # fmt: skip


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
    max_tiles: int | None = field(
        default=None, metadata={"help": "AnyRes (LLaVA-NeXT) image splitting: grids of up to this many tiles"}
    )
    max_image_tokens: int | None = field(
        default=None, metadata={"help": "AnyRes: image tokens per sample; larger grids shrink to fit (logged)"}
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
    trainer: str = field(
        default="sft", metadata={"help": "sft (schema rows) | dpo (make_preferences rows) | grpo (schema rows)"}
    )
    abstain_cost: float = field(
        default=0.5, metadata={"help": "grpo: the reward for abstaining on an answerable row is -abstain_cost"}
    )
    license: str = field(default="other", metadata={"help": "the model card's license (check the backbones')"})


@dataclass
class DataArguments(DatasetMixtureConfig):
    """TRL's dataset mixture (`datasets: [{path, split, fraction}, ...]`), read with our loader (save_to_disk folders
    and Hub ids of datasets in the canonical schema)."""

    eval_split: str | None = "validation"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_skip_fraction: float = 0.05
    too_long: str = field(
        default="skip",
        metadata={"help": "rows longer than max_length: skip (dropped, counted) | truncate (never through an image)"},
    )


def merge_recipes(base: dict, overlay: dict) -> dict:
    """`overlay` on `base`: mappings merge key by key, every other value (lists too) is replaced."""
    out = dict(base)
    for key, value in overlay.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_recipes(out[key], value) if both_dicts else value
    return out


def read_recipe(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Recipe {path!r} does not exist (cwd: {os.getcwd()}).")
    with open(path) as f:
        recipe = yaml.safe_load(f) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {path!r} must hold a YAML mapping of keys, got {type(recipe).__name__}.")
    return recipe


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(recipe files, flags): leading *.yaml paths, plus TRL's `--config FILE` (which may repeat)."""
    argv, paths = list(argv), []
    while argv and argv[0].endswith((".yaml", ".yml")):
        paths.append(argv.pop(0))
    while "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("`--config` needs a recipe file after it.")
        paths.append(argv.pop(i + 1))
        argv.pop(i)
    return paths, argv


def compose(paths: list[str]) -> dict:
    """The recipe files merged left to right (see merge_recipes)."""
    recipe = {}
    for path in paths:
        recipe = merge_recipes(recipe, read_recipe(path))
    return recipe


def parse_composed(dataclass_types: tuple, argv: list[str]) -> tuple:
    """`[recipe.yaml ...] [--flag value ...]` -> instances of `dataclass_types` (TRL's parser), recipe files merged
    left to right then flags; an unknown key or a bad value raises naming it."""
    paths, flags = split_argv(argv)
    recipe = compose(paths)
    for key, value in (recipe.pop("env", None) or {}).items():  # TRL's `env:` block
        os.environ[key] = str(value)
    parser = TrlParser(dataclass_types, exit_on_error=False)
    unknown = parser.set_defaults_with_config(**recipe)
    if unknown:
        keys = [s.removeprefix("--") for s in unknown if s.startswith("--")]  # TRL returns them as flag strings
        raise ValueError(f"Unknown recipe keys in {paths}: {keys}. Check their spelling (`--help`).")
    try:
        return tuple(parser.parse_args_into_dataclasses(args=flags))
    except argparse.ArgumentError as error:  # e.g. `lora_r: eight`; argparse would sys.exit() from inside main()
        raise ValueError(f"Bad recipe or flag value: {error}.") from error


def trainer_of(argv: list[str]) -> str:
    """The recipe's `trainer` (the last --trainer flag wins over the files), checked before its config is parsed."""
    paths, flags = split_argv(argv)
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--trainer", default=compose(paths).get("trainer", "sft"))
    trainer = peek.parse_known_args(flags)[0].trainer
    if trainer not in TRAINER_CONFIGS:
        raise ValueError(f"Recipe key 'trainer' must be one of {sorted(TRAINER_CONFIGS)}, got {trainer!r}.")
    return trainer


def parse_recipe(argv: list[str]) -> tuple["ModelArguments", "DataArguments", SFTConfig]:
    """`[recipe.yaml ...] [--flag value ...]` -> the three dataclasses, checked (see `check_recipe`); the third is
    the TRL config of the recipe's `trainer` (SFTConfig, DPOConfig or GRPOConfig)."""
    config_class = TRAINER_CONFIGS[trainer_of(argv)]
    model_args, data_args, training_args = parse_composed((ModelArguments, DataArguments, config_class), argv)
    check_recipe(model_args, data_args, training_args)
    # Our collator (TRL's vision collators for DPO/GRPO) builds the batches from the raw columns: keep them all.
    training_args.remove_unused_columns = False
    if isinstance(training_args, SFTConfig):  # and SFTTrainer must not re-tokenise them
        training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    return model_args, data_args, training_args


def value_rules() -> dict:
    """Recipe key -> (allowed(value), what is allowed), for keys whose type alone lets a bad value through to a model
    load or a PEFT call hours later (`lora_r: -1` would fail inside PEFT without naming the key)."""
    from modeling_minillava.configuration_minillava import IMAGE_POSITIONS
    from modeling_minillava.projectors import PROJECTORS

    positive, optional_positive = (lambda v: v > 0, "> 0"), (lambda v: v is None or v > 0, "> 0 or null")
    return {
        "projector_type": (lambda v: v in PROJECTORS, f"one of {sorted(PROJECTORS)}"),
        "perceiver_num_latents": positive,
        "pixel_shuffle_factor": positive,
        "image_position": (lambda v: v is None or v in IMAGE_POSITIONS, f"one of {IMAGE_POSITIONS} or null"),
        "max_tiles": optional_positive,
        "max_image_tokens": optional_positive,
        "llm_top_k_blocks": (lambda v: v >= 0, ">= 0"),
        "lora_r": (lambda v: v >= 0, ">= 0 (0 turns LoRA off)"),
        "lora_alpha": positive,
        "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "lora_target_modules": (lambda v: len(v) > 0, f"a non-empty list of module names, e.g. {LLM_LINEAR_NAMES}"),
        "dtype": (lambda v: v in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16"),
        "max_train_samples": optional_positive,
        "max_eval_samples": optional_positive,
        "max_skip_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "too_long": (lambda v: v in TOO_LONG_POLICIES, f"one of {TOO_LONG_POLICIES}"),
        "abstain_cost": (lambda v: v > 0, "> 0 (abstaining for free on answerable rows teaches abstaining)"),
    }


def check_values(model_args, data_args) -> None:
    rules = value_rules()
    for cfg in (model_args, data_args):
        for key in rules.keys() & {f.name for f in dataclasses.fields(cfg)}:
            allowed, what = rules[key]
            if not allowed(getattr(cfg, key)):
                raise ValueError(f"Recipe key {key!r} must be {what}, got {getattr(cfg, key)!r}.")


def normalise_resume(training_args) -> None:
    """YAML `resume_from_checkpoint: true` is a bool where TrainingArguments types a str: the same as the flag's
    "true" (the newest whole checkpoint); `false` is unset."""
    if isinstance(training_args.resume_from_checkpoint, bool):
        training_args.resume_from_checkpoint = "true" if training_args.resume_from_checkpoint else None


def check_recipe(model_args, data_args, training_args) -> None:
    """Every key does what it says or is refused here, naming the key and the fix."""
    normalise_resume(training_args)
    check_types(model_args, data_args, training_args)
    check_values(model_args, data_args)
    if not data_args.datasets:
        raise ValueError("The recipe lists no `datasets`; add e.g. `datasets: [{path: data/synthetic}]`.")
    check_mixture(data_args)
    if getattr(training_args, "packing", False) and training_args.packing_strategy not in ("bfd", "bfd_split"):
        raise ValueError(
            f"Recipe key 'packing_strategy: {training_args.packing_strategy}' is not supported: our collator packs "
            "each batch's whole rows into one padding-free sequence (TRL's padding_free); leave the default `bfd`."
        )
    if not (model_args.init_from or (model_args.vision_name and model_args.llm_name)):
        raise ValueError("Set `init_from` (a previous stage's output) or both `vision_name` and `llm_name`.")
    if model_args.init_from:  # the architecture is init_from's config.json; a key that would change it is refused
        default = ModelArguments()
        changed = [k for k in ARCHITECTURE_KEYS if getattr(model_args, k) != getattr(default, k)]
        if changed:
            raise ValueError(
                f"Recipe keys {changed} shape a model built from the backbones, but `init_from` loads one whose "
                "config.json fixes them: drop them, or set `init_from: null` with `vision_name` and `llm_name`."
            )
    if model_args.trainer != "sft" and not model_args.init_from:
        raise ValueError(
            f"`trainer: {model_args.trainer}` trains a trained model's answers (stage 4): set `init_from` to the "
            "stage-2 output (its merged/ folder)."
        )
    if model_args.llm_full and model_args.lora_r:
        raise ValueError("`llm_full: true` and `lora_r > 0` conflict: pick full fine-tuning or LoRA.")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.init_from:
        raise ValueError("QLoRA/8-bit loads a saved MiniLlava: set `init_from` to the stage-1 output.")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not (training_args.bf16 or training_args.fp16):
        # SFTTrainer casts a quantized model's trainable weights (LoRA, the projector copy) to bfloat16, while PEFT's
        # kbit preparation keeps the vision tower in float32: only autocast makes the two meet (else step 1 fails).
        raise ValueError("QLoRA/8-bit needs mixed precision: set `bf16: true` (with `use_cpu: true` on a CPU).")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and training_args.use_cpu:
        # accelerate 1.15 only switches to FSDP for GPU-type backends: on CPU (MULTI_CPU) it drops the plugin.
        raise ValueError(
            "accelerate launch asked for FSDP with `use_cpu: true`, but accelerate runs no FSDP on CPU (it would "
            "silently be plain DDP). On CPU use recipes/accelerate/ddp.yaml or deepspeed_zero3.yaml."
        )
    if transformers.integrations.is_deepspeed_zero3_enabled() and not model_args.init_from:
        raise ValueError(
            "DeepSpeed ZeRO-3 needs `init_from` (a saved MiniLlava, e.g. the stage-1 output): from_backbones builds "
            "its skeleton on the meta device, which ZeRO-3's sharded init cannot fill. Run stage 1 with DDP or ZeRO-2."
        )


def check_types(*configs) -> None:
    """YAML values reach dataclasses unconverted: reject a wrong type at parse time, naming the key."""
    for cfg in configs:
        hints = typing.get_type_hints(type(cfg))
        for f in dataclasses.fields(cfg):
            if f.name in CONVERTED_AFTER_PARSING:
                continue
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
    """A local path that does not exist gets "no such folder" now, not a Hub error about repo ids after loading.
    Called when the run starts, not at parse time: recipes name the outputs of earlier stages."""
    named = [(key, getattr(model_args, key)) for key in ("vision_name", "llm_name", "init_from")]
    named += [("datasets[].path", cfg.path) for cfg in data_args.datasets or []]
    for key, value in named:
        if value and looks_local(value) and not os.path.exists(os.path.expanduser(value)):
            raise ValueError(f"Recipe key {key!r}: no such folder {value!r} (cwd: {os.getcwd()}).")


def resolved_recipe(model_args, data_args, training_args) -> dict:
    """The run as one recipe: every key whose value differs from its declared default (files merged, flags applied,
    values the configs derive in __post_init__ included), so `run_sft.py THIS.yaml` parses back to the same run."""
    recipe = {}
    for cfg in (model_args, data_args, training_args):
        for f in dataclasses.fields(cfg):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = getattr(cfg, f.name)
            if f.init and value != default:
                recipe[f.name] = plain(value)
    recipe.pop("dataset_kwargs", None)  # set by parse_recipe itself
    recipe.pop("remove_unused_columns", None)
    return recipe


def plain(value):
    """A dataclass value as YAML-safe data (enums by value, dataclasses as dicts)."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
