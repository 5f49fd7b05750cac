"""Image tokens per image for SigLIP-so400m (384 px tiles, 27x27 patches) + Qwen2.5, single tile vs AnyRes, with the
mlp2x_gelu and pixel_shuffle_mlp projectors: counted from the config, checked against the model on the meta device.

    python -m bench.image_tokens [--json bench/results/image_tokens.json]
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoConfig

from modeling_minillava import MiniLlavaConfig, MiniLlavaModel

BACKBONES = Path(__file__).resolve().parents[1] / "recipes" / "backbones"
VISION, LLM = "siglip-so400m-patch14-384", "qwen2.5-1.5b-instruct"
TILE = 384
# (height, width) of the images a README reader asks about.
IMAGES = {
    "A4 page 2480x3508": (3508, 2480),
    "phone screenshot 1080x2400": (2400, 1080),
    "dashboard 2400x1080": (1080, 2400),
    "dashboard 3840x1080": (1080, 3840),
}
# LLaVA-NeXT's own five canvases (336-px tiles in llava-v1.6) on 384-px tiles: 1x2, 2x1, 2x2, 3x1, 1x3.
LLAVA_NEXT_PINPOINTS = [[TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE], [3 * TILE, TILE], [TILE, 3 * TILE]]
# 27x27 patches: a pixel-shuffle factor must divide 27, so 3 (9x fewer tokens); 2 (4x) is refused for this tower.
SETUPS = {
    "mlp2x_gelu, single tile": {"projector_type": "mlp2x_gelu"},
    "mlp2x_gelu, AnyRes LLaVA-NeXT pinpoints": {
        "projector_type": "mlp2x_gelu",
        "image_grid_pinpoints": LLAVA_NEXT_PINPOINTS,
    },
    "mlp2x_gelu, AnyRes max_tiles=9": {"projector_type": "mlp2x_gelu", "max_tiles": 9},
    "pixel_shuffle r=3, single tile": {"projector_type": "pixel_shuffle_mlp", "pixel_shuffle_factor": 3},
    "pixel_shuffle r=3, AnyRes LLaVA-NeXT pinpoints": {
        "projector_type": "pixel_shuffle_mlp",
        "pixel_shuffle_factor": 3,
        "image_grid_pinpoints": LLAVA_NEXT_PINPOINTS,
    },
    "pixel_shuffle r=3, AnyRes max_tiles=9": {
        "projector_type": "pixel_shuffle_mlp",
        "pixel_shuffle_factor": 3,
        "max_tiles": 9,
    },
}


def load_config(name: str):
    return AutoConfig.for_model(**json.loads((BACKBONES / f"{name}.json").read_text()))


def build_config(**kwargs) -> MiniLlavaConfig:
    text = load_config(LLM)
    return MiniLlavaConfig(
        vision_config=load_config(VISION), text_config=text, image_token_id=text.vocab_size - 1, **kwargs
    )


def image_tokens(config: MiniLlavaConfig, height: int, width: int) -> int:
    """Placeholder tokens one image of (height, width) takes for this config (no max_image_tokens budget)."""
    return config.count_image_tokens(height, width)


def meta_model_tokens(model: MiniLlavaModel, height: int, width: int) -> int:
    """The same count from the model itself: its tiles through the real-size tower + projector + packing on the meta
    device (shapes only, no weights, no compute)."""
    rows, cols = model.config.image_grid(height, width)
    n_tiles = 1 + rows * cols if model.config.anyres else 1
    pixel_values = torch.empty(n_tiles, 3, TILE, TILE, device="meta")
    if not model.config.anyres:
        return model.get_image_features(pixel_values).shape[1]
    return model.get_image_features(pixel_values, torch.tensor([[height, width]]))[0].shape[0]


def table() -> list[dict]:
    rows = []
    for setup, kwargs in SETUPS.items():
        config = build_config(**kwargs)
        with torch.device("meta"):
            model = MiniLlavaModel(config)
        for image, (height, width) in IMAGES.items():
            tokens = image_tokens(config, height, width)
            if tokens != meta_model_tokens(model, height, width):
                raise AssertionError(f"{setup}, {image}: the config and the meta model disagree")
            rows.append(
                {
                    "setup": setup,
                    "image": image,
                    "grid": "x".join(map(str, config.image_grid(height, width))),
                    "tokens": tokens,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = table()
    images = list(IMAGES)
    print(f"Image tokens per image, {VISION} (tile {TILE} px) + {LLM}; cells: tokens (rows x cols of tiles)")
    print(" | ".join(["setup", *images]))
    for setup in SETUPS:
        cells = {r["image"]: f"{r['tokens']} ({r['grid']})" for r in rows if r["setup"] == setup}
        print(" | ".join([setup, *(cells[i] for i in images)]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
