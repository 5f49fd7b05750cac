"""The tiny real pipeline the generation and input-pipeline benchmarks share: the tests' tiny backbones (built into a
temp folder unless given), a random-init model from them, its processor and synthetic rows of one split."""

import os
import tempfile

import torch

from data_scripts.make_synthetic import make_sample, split_of
from data_scripts.make_tiny_backbones import make_tiny_backbones
from modeling_minillava import MiniLlavaForConditionalGeneration
from processing import MiniLlavaProcessor


def backbone_paths(folder: str | None) -> dict[str, str]:
    """Paths of the tiny backbones in `folder` (as written by make_tiny_backbones), else built into a temp folder."""
    if folder is None:
        folder = tempfile.mkdtemp(prefix="minillava-bench-")
    names = ("vision-siglip", "vision-clip", "llm-qwen2", "llm-llama")
    if not all(os.path.isdir(os.path.join(folder, n)) for n in names):
        return make_tiny_backbones(folder)
    return {n: os.path.join(folder, n) for n in names}


def build_tiny(folder: str | None, seed: int = 0):
    """(model in eval mode, processor) from the tiny SigLIP + Qwen2 backbones; random projector seeded."""
    paths = backbone_paths(folder)
    torch.manual_seed(seed)
    model = MiniLlavaForConditionalGeneration.from_backbones(paths["vision-siglip"], paths["llm-qwen2"]).eval()
    processor = MiniLlavaProcessor.from_backbones(paths["vision-siglip"], paths["llm-qwen2"], config=model.config)
    return model, processor


def synthetic_rows(split: str, n: int, seed: int = 0) -> list[dict]:
    """The first n rows of a synthetic split, rendered on the fly (same rows as make_synthetic's, no dataset I/O)."""
    rows, index = [], 0
    while len(rows) < n:
        if split_of(seed, index) == split:
            rows.append(make_sample(seed, index))
        index += 1
    return rows


def stop_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]
