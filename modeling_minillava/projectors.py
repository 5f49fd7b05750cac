"""Projectors that map vision-tower features [B, N, D_vision] to LLM-sized virtual tokens [B, T_img, D_text].

Each projector class declares `num_output_tokens(config, num_input_tokens)` so the number of image slots is always
computed from the config, never typed by hand. Register new ones in `PROJECTORS`.
"""

import math

import torch
from torch import nn
from transformers.activations import ACT2FN


class MlpProjector(nn.Module):
    """LLaVA-1.5's `mlp2x_gelu`: Linear -> GELU -> Linear, one output token per vision token."""

    keeps_grid = True  # output tokens keep the tower's square patch grid (AnyRes can stitch tiles)

    def __init__(self, config):
        super().__init__()
        d_vision, d_text = config.vision_config.hidden_size, config.text_config.hidden_size
        self.linear_1 = nn.Linear(d_vision, d_text)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(d_text, d_text)

    @staticmethod
    def num_output_tokens(config, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:  # [B, N, Dv] -> [B, N, Dt]
        return self.linear_2(self.act(self.linear_1(image_features)))


class PerceiverLayer(nn.Module):
    """One Flamingo-style resampler block: latents attend to [features; latents], then a feed-forward."""

    def __init__(self, dim: int, num_heads: int, act: str):
        super().__init__()
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_features = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), ACT2FN[act], nn.Linear(4 * dim, dim))

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        q = self.norm_latents(latents)  # [B, L, D]
        kv = torch.cat([self.norm_features(features), q], dim=1)  # [B, N + L, D]
        latents = latents + self.attn(q, kv, kv, need_weights=False)[0]
        return latents + self.ff(self.norm_ff(latents))


class PerceiverResampler(nn.Module):
    """A fixed number of learned latents (`perceiver_num_latents`) cross-attend to the image features.

    Works in the LLM's width so the head count can be the LLM's own (it always divides the hidden size).
    """

    keeps_grid = False  # learned latents: no spatial layout

    def __init__(self, config):
        super().__init__()
        d_vision, d_text = config.vision_config.hidden_size, config.text_config.hidden_size
        self.input_proj = nn.Linear(d_vision, d_text)
        self.latents = nn.Parameter(torch.zeros(config.perceiver_num_latents, d_text))
        heads = config.text_config.num_attention_heads
        self.layers = nn.ModuleList(
            PerceiverLayer(d_text, heads, config.projector_hidden_act) for _ in range(config.perceiver_depth)
        )
        self.norm = nn.LayerNorm(d_text)

    @staticmethod
    def num_output_tokens(config, num_input_tokens: int) -> int:
        return config.perceiver_num_latents

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:  # [B, N, Dv] -> [B, L, Dt]
        features = self.input_proj(image_features)
        latents = self.latents.unsqueeze(0).expand(features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, features)
        return self.norm(latents)


class PixelShuffleMlp(nn.Module):
    """Space-to-depth by `pixel_shuffle_factor` r (as Idefics3 / SmolVLM / nanoVLM), then the 2-layer MLP.

    A (s x s) grid of D-dim tokens becomes a (s/r x s/r) grid of (D * r^2)-dim tokens: r^2 fewer image tokens.
    """

    keeps_grid = True

    def __init__(self, config):
        super().__init__()
        self.factor = config.pixel_shuffle_factor
        d_in, d_text = config.vision_config.hidden_size * self.factor**2, config.text_config.hidden_size
        self.linear_1 = nn.Linear(d_in, d_text)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(d_text, d_text)

    @staticmethod
    def num_output_tokens(config, num_input_tokens: int) -> int:
        side, r = math.isqrt(num_input_tokens), config.pixel_shuffle_factor
        if side * side != num_input_tokens or side % r:
            raise ValueError(
                f"pixel_shuffle_mlp needs a square grid whose side divides by pixel_shuffle_factor={r}, but the "
                f"vision tower gives {num_input_tokens} tokens (side {math.sqrt(num_input_tokens):g}). Pick a factor "
                f"that divides {side} (e.g. 3 for SigLIP-so400m's 27x27 grid) or another projector_type."
            )
        return num_input_tokens // r**2

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:  # [B, s*s, D] -> [B, (s/r)^2, Dt]
        b, n, d = image_features.shape
        s, r = math.isqrt(n), self.factor
        x = image_features.reshape(b, s // r, r, s // r, r, d)  # rows split into (row_block, r), cols likewise
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, (s // r) ** 2, r * r * d)  # each r x r block -> one token
        return self.linear_2(self.act(self.linear_1(x)))


PROJECTORS = {
    "mlp2x_gelu": MlpProjector,
    "perceiver": PerceiverResampler,
    "pixel_shuffle_mlp": PixelShuffleMlp,
}


def build_projector(config) -> nn.Module:
    return PROJECTORS[config.projector_type](config)
