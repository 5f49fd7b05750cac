"""The models and batches the CPU benchmarks time: named sizes (random init, no weights), our model and
transformers' Llava built from the same sub-configs, a synthetic batch for each, and one training step."""

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig

from modeling_minillava import MiniLlavaConfig, MiniLlavaForConditionalGeneration

# tiny = the tests' tiny backbones (data_scripts/make_tiny_backbones.py); mid = a small real-shaped pair.
SIZES = {
    "tiny": {
        "vision": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
        },
        "text": {
            "hidden_size": 96,
            "intermediate_size": 192,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 1024,
        },
        "batch_size": 4,
        "text_len": 32,
    },
    "mid": {
        "vision": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 224,
            "patch_size": 16,
        },
        "text": {
            "hidden_size": 512,
            "intermediate_size": 1408,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "vocab_size": 16384,
        },
        "batch_size": 2,
        "text_len": 64,
    },
}
TEXT_PREFIX = 4  # text tokens before the image slots (a chat header), the rest after them
ATTN = "sdpa"  # both models, explicitly: the comparison must not hinge on a default


def size_configs(size: str) -> tuple[SiglipVisionConfig, Qwen2Config]:
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; allowed: {sorted(SIZES)}.")
    spec = SIZES[size]
    vision = SiglipVisionConfig(vision_use_head=False, **spec["vision"])  # the pooling head feeds neither model
    text = Qwen2Config(tie_word_embeddings=False, max_position_embeddings=4096, **spec["text"])
    return vision, text


def build_minillava(vision, text) -> MiniLlavaForConditionalGeneration:
    config = MiniLlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_token_id=text.vocab_size - 1,
    )
    config._attn_implementation = ATTN
    return MiniLlavaForConditionalGeneration(config).train()


def build_llava(vision, text, image_seq_length: int) -> LlavaForConditionalGeneration:
    """transformers' Llava from the same sub-configs; the image token is the last vocabulary id."""
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_seq_length=image_seq_length,
        image_token_index=text.vocab_size - 1,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    config._attn_implementation = ATTN
    model = LlavaForConditionalGeneration(config).train()
    model.model.vision_tower.requires_grad_(False)  # the same trainable set as ours (frozen tower)
    return model


def make_batch(size: str, n_img: int, seed: int = 0) -> dict:
    """One batch shared by every candidate: [prefix][n_img image slots][text], all tokens real (no padding).

    Returns ours and llava's: the same input_ids with each model's image token id in the slots.
    """
    spec = SIZES[size]
    b, vocab, image_size = spec["batch_size"], spec["text"]["vocab_size"], spec["vision"]["image_size"]
    t = n_img + spec["text_len"]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 1, (b, t), generator=g)  # vocab-1 is llava's image token, never a text id
    image_mask = torch.zeros(b, t, dtype=torch.bool)
    image_mask[:, TEXT_PREFIX : TEXT_PREFIX + n_img] = True
    labels = ids.masked_fill(image_mask, -100)
    labels[:, :TEXT_PREFIX] = -100
    pixel_values = torch.randn(b, 3, image_size, image_size, generator=g)
    llava = {
        "input_ids": ids.masked_fill(image_mask, vocab - 1),
        "pixel_values": pixel_values,
        "attention_mask": torch.ones(b, t, dtype=torch.long),
        "labels": labels,
    }
    ours = llava  # both models mark images with the same placeholder id (vocab - 1)
    return {"ours": ours, "llava": llava, "batch_size": b, "seq_len": t}


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count(params) -> int:
    return sum(p.numel() for p in params)


def make_train_step(model, batch: dict, lr: float = 1e-5):
    """A closure running forward + backward + AdamW step over the model's trainable parameters."""
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        return loss

    return step
