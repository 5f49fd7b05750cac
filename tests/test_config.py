"""MiniLlavaConfig: validation, computed image-token counts, round trip, weight-tying flag."""

import pytest
from transformers import CLIPVisionConfig, LlamaConfig, Qwen2Config, SiglipVisionConfig

from modeling_minillava import MiniLlavaConfig

SIGLIP = SiglipVisionConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
CLIP = CLIPVisionConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
QWEN = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100)


@pytest.mark.parametrize(
    "vision, projector, extra, expected",
    [
        (SIGLIP, "mlp2x_gelu", {}, 64),  # 8x8 patches, no CLS
        (CLIP, "mlp2x_gelu", {}, 64),  # 8x8 patches + CLS, "default" drops CLS
        (CLIP, "mlp2x_gelu", {"vision_feature_select_strategy": "full"}, 65),
        (SIGLIP, "pixel_shuffle_mlp", {"pixel_shuffle_factor": 2}, 16),  # (8/2)^2
        (SIGLIP, "pixel_shuffle_mlp", {"pixel_shuffle_factor": 4}, 4),
        (CLIP, "pixel_shuffle_mlp", {"pixel_shuffle_factor": 2}, 16),
        (SIGLIP, "perceiver", {"perceiver_num_latents": 12}, 12),
    ],
)
def test_num_image_tokens_is_computed(vision, projector, extra, expected):
    config = MiniLlavaConfig(vision_config=vision, text_config=QWEN, projector_type=projector, **extra)
    assert config.num_image_tokens == expected


def test_strategy_defaults_follow_the_tower():
    assert MiniLlavaConfig(vision_config=SIGLIP, text_config=QWEN).vision_feature_select_strategy == "full"
    assert MiniLlavaConfig(vision_config=CLIP, text_config=QWEN).vision_feature_select_strategy == "default"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"projector_type": "mlp3x"}, "Unknown projector_type='mlp3x'; allowed values: ['mlp2x_gelu', 'perceiver'"),
        ({"image_position": "suffix"}, "Unknown image_position='suffix'; allowed values: ['prefix', 'user_turn']"),
        ({"vision_feature_select_strategy": "cls"}, "Unknown vision_feature_select_strategy='cls'"),
        ({"vision_feature_select_strategy": "default"}, "siglip_vision_model has none; use 'full'"),
        ({"vision_feature_layer": -4}, "vision_feature_layer=-4 is outside the tower's 2 layers (valid: -3..2)"),
        ({"projector_type": "pixel_shuffle_mlp", "pixel_shuffle_factor": 3}, "pixel_shuffle_factor=3"),
    ],
)
def test_bad_values_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError) as err:
        MiniLlavaConfig(vision_config=SIGLIP, text_config=QWEN, **kwargs)
    assert message in str(err.value)


def test_unknown_vision_tower_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"vision_config.model_type='vit'.*clip_vision_model"):
        MiniLlavaConfig(vision_config={"model_type": "vit"}, text_config=QWEN)


def test_round_trip_through_dict_rebuilds_the_same_architecture(tmp_path):
    config = MiniLlavaConfig(vision_config=CLIP, text_config=QWEN, projector_type="perceiver", perceiver_num_latents=7)
    config.save_pretrained(tmp_path)
    loaded = MiniLlavaConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert type(loaded.vision_config) is CLIPVisionConfig and type(loaded.text_config) is Qwen2Config
    assert loaded.num_image_tokens == 7
    assert loaded.auto_map["AutoModel"] == "modeling_minillava.MiniLlavaForConditionalGeneration"


@pytest.mark.parametrize("tie", [True, False])
def test_tie_word_embeddings_mirrors_the_llm(tie):
    text = LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, tie_word_embeddings=tie)
    assert MiniLlavaConfig(vision_config=SIGLIP, text_config=text).tie_word_embeddings is tie
