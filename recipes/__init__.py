"""The code that turns recipes (the YAML files next to it) into a run: `parse_recipe` composes recipe files and flags
into TRL's dataclasses, `build_trainer` builds the SFTTrainer, `save_artefacts` writes a model folder with its
provenance. run_sft.py is the thin entry point over them; scripts, bench and tests import from here."""

from .arguments import DataArguments, ModelArguments, parse_recipe
from .builder import build_collator, build_model, build_processor, build_trainer, load_mixture, run, train
from .provenance import save_artefacts, write_training_card

__all__ = [
    "DataArguments",
    "ModelArguments",
    "build_collator",
    "build_model",
    "build_processor",
    "build_trainer",
    "load_mixture",
    "parse_recipe",
    "run",
    "train",
    "save_artefacts",
    "write_training_card",
]
