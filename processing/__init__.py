"""Text + image -> tensors for Mini-LLaVA: the processor (ships as remote code) and the training collator."""

from transformers import AutoProcessor

from modeling_minillava import MiniLlavaConfig

from .processing_minillava import MiniLlavaProcessor

AutoProcessor.register(MiniLlavaConfig, MiniLlavaProcessor, exist_ok=True)
# `save_pretrained` writes `auto_map` into processor_config.json and copies processing_minillava.py with the sibling
# modules it imports relatively (chat_templates, image_loading, answers, anyres_processing).
MiniLlavaProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["MiniLlavaProcessor"]
