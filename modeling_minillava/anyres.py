"""AnyRes (LLaVA-NeXT) geometry, following transformers' llava_next exactly: grid pinpoints, the tile grid an image
gets, how many tokens it becomes after unpadding + one newline per row, and packing its tile features into them."""

import math

import torch
from transformers.image_processing_utils import select_best_resolution


def derive_pinpoints(max_tiles: int, tile_size: int) -> list[list[int]]:
    """Every [rows * tile, cols * tile] with rows * cols <= max_tiles (LLaVA-OneVision's "anyres_max" grids; 1x1
    included so a small image is never upscaled to a multi-tile canvas). Order fixes select_best_resolution's ties."""
    return [
        [rows * tile_size, cols * tile_size]
        for rows in range(1, max_tiles + 1)
        for cols in range(1, max_tiles + 1)
        if rows * cols <= max_tiles
    ]


def image_grid(image_size, pinpoints: list, tile_size: int) -> tuple[int, int]:
    """(rows, cols) of tiles for an image of (height, width), as LlavaNext's get_anyres_image_grid_shape."""
    height, width = select_best_resolution([int(s) for s in image_size], pinpoints)
    return height // tile_size, width // tile_size


def unpad_box(orig_height: int, orig_width: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the image inside a (height, width) feature grid that was letterboxed to keep the
    original aspect ratio; LlavaNext's unpad_image (model) and _get_unpadded_features (processor) in one place."""
    if orig_width / orig_height > width / height:  # wider than the canvas: padded above and below
        new_height = int(round(orig_height * (width / orig_width), 7))
        pad = (height - new_height) // 2
        return pad, height - pad, 0, width
    new_width = int(round(orig_width * (height / orig_height), 7))
    pad = (width - new_width) // 2
    return 0, height, pad, width - pad


def count_anyres_tokens(image_size, grid: tuple[int, int], side: int) -> int:
    """Tokens of one image: the base (thumbnail) tile's side*side + the unpadded tile grid with a newline per row."""
    rows, cols = grid
    top, bottom, left, right = unpad_box(int(image_size[0]), int(image_size[1]), rows * side, cols * side)
    return side * side + (bottom - top) * (right - left + 1)


def pack_image_features(
    features: torch.Tensor, image_size, grid: tuple[int, int], newline: torch.Tensor
) -> torch.Tensor:
    """[1 + rows*cols, side*side, D] (base tile first) -> [T_img, D]: base tokens, then the tiles stitched into one
    feature map, unpadded, with `newline` closing each row (LlavaNext's pack_image_features)."""
    rows, cols = grid
    n_tiles, n_tok, dim = features.shape
    side = math.isqrt(n_tok)
    if n_tiles != 1 + rows * cols or side * side != n_tok:
        raise ValueError(
            f"got {n_tiles} tiles x {n_tok} tokens for a {rows}x{cols} grid; expected {1 + rows * cols} tiles (base + "
            "grid) of a square token grid. Were pixel_values made with another image_grid_pinpoints?"
        )
    base, tiles = features[0], features[1:]
    grid_map = tiles.view(rows, cols, side, side, dim).permute(4, 0, 2, 1, 3)  # [D, rows, side, cols, side]
    grid_map = grid_map.contiguous().flatten(1, 2).flatten(2, 3)  # [D, rows*side, cols*side]
    top, bottom, left, right = unpad_box(int(image_size[0]), int(image_size[1]), *grid_map.shape[1:])
    grid_map = grid_map[:, top:bottom, left:right]  # [D, H, W]
    newlines = newline[:, None, None].expand(*grid_map.shape[:-1], 1).to(grid_map.device, grid_map.dtype)
    grid_map = torch.cat((grid_map, newlines), dim=-1)  # [D, H, W + 1]
    return torch.cat((base, grid_map.flatten(1, 2).transpose(0, 1)), dim=0)  # [side^2 + H*(W+1), D]


__all__ = ["derive_pinpoints", "image_grid", "unpad_box", "count_anyres_tokens", "pack_image_features"]
