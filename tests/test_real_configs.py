"""The real architectures (Qwen2.5-1.5B/3B/7B + SigLIP-so400m) build and run forward on the meta device."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from modeling_minillava import MiniLlavaConfig, MiniLlavaForConditionalGeneration

BACKBONES = Path(__file__).resolve().parents[1] / "recipes" / "backbones"


def load_config(name: str):
    return AutoConfig.for_model(**json.loads((BACKBONES / f"{name}.json").read_text()))


@pytest.mark.parametrize("llm", ["qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct", "qwen2.5-7b-instruct"])
@pytest.mark.parametrize("projector", ["mlp2x_gelu", "perceiver", "pixel_shuffle_mlp"])
def test_real_sizes_build_and_run_on_meta(llm, projector):
    text = load_config(llm)
    hidden, vocab, tied = text.hidden_size, text.vocab_size, text.tie_word_embeddings
    vision = load_config("siglip-so400m-patch14-384")
    sizes = {"pixel_shuffle_factor": 3, "perceiver_num_latents": 64}
    image_token_id = {"qwen2": 151655}.get(text.model_type, vocab)  # Qwen2.5's <|image_pad|>; else an added token
    config = MiniLlavaConfig(
        vision_config=vision, text_config=text, projector_type=projector, image_token_id=image_token_id, **sizes
    )
    n_img = {"mlp2x_gelu": 729, "perceiver": 64, "pixel_shuffle_mlp": 81}[projector]  # 27x27 grid; /3^2
    assert config.num_image_tokens == n_img
    with torch.device("meta"):
        model = MiniLlavaForConditionalGeneration(config)
        proj = model.model.multi_modal_projector
        first = proj.input_proj if projector == "perceiver" else proj.linear_1
        assert first.in_features == 1152 * (9 if projector == "pixel_shuffle_mlp" else 1)
        assert first.out_features == hidden
        assert model.lm_head.weight.shape == (vocab, hidden)
        assert (model.lm_head.weight is model.get_input_embeddings().weight) is tied
        n_text = 16
        ids = torch.zeros(1, n_img + n_text, dtype=torch.long)
        ids[0, 4 : 4 + n_img] = image_token_id
        out = model(input_ids=ids, pixel_values=torch.zeros(1, 3, 384, 384))
        assert out.logits.shape == (1, n_img + n_text, vocab)
        assert model.get_image_features(torch.zeros(2, 3, 384, 384)).shape == (2, n_img, hidden)
