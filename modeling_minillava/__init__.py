"""Mini-LLaVA model: registers the config, model and auto-class mappings so AutoClasses resolve in this process."""

from transformers import AutoConfig, AutoModelForImageTextToText

from .configuration_minillava import MiniLlavaConfig
from .modeling_minillava import MiniLlavaForConditionalGeneration, MiniLlavaModel, MiniLlavaPreTrainedModel
from .projectors import PROJECTORS, build_projector

AutoConfig.register("minillava", MiniLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(MiniLlavaConfig, MiniLlavaForConditionalGeneration, exist_ok=True)
# `save_pretrained` writes `auto_map` and copies the code next to the weights (trust_remote_code loading).
MiniLlavaConfig.register_for_auto_class()
MiniLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "MiniLlavaConfig",
    "MiniLlavaModel",
    "MiniLlavaPreTrainedModel",
    "MiniLlavaForConditionalGeneration",
    "PROJECTORS",
    "build_projector",
]
