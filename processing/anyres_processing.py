"""AnyRes (LLaVA-NeXT) on the processor side: the tower's image processor as LlavaNext's, the token count of an image
on a canvas, and each image processed on its planned canvas. Ships as remote code next to processing_minillava.py
(named so it never collides with modeling_minillava/anyres.py when both are saved into one folder)."""

import numpy as np
from PIL import Image
from transformers import LlavaNextImageProcessorPil


def anyres_tokens(image_size, canvas, tile: int, side: int) -> int:
    """Tokens of one AnyRes image (LlavaNextProcessor._get_number_of_features with a square tile of side*side tokens):
    the base tile + the canvas's tile grid on the token level, unpadded to the image's aspect ratio, + a newline per
    row. Mirrors modeling_minillava/anyres.py (this file ships alone); tests hold the two to the same counts."""
    orig_h, orig_w = int(image_size[0]), int(image_size[1])
    height, width = canvas[0] // tile * side, canvas[1] // tile * side
    if orig_w / orig_h > width / height:
        height -= (height - int(round(orig_h * (width / orig_w), 7))) // 2 * 2
    else:
        width -= (width - int(round(orig_w * (height / orig_h), 7))) // 2 * 2
    return side * side + height * (width + 1)


def anyres_image_processor(image_processor, tile: int, pinpoints: list) -> LlavaNextImageProcessorPil:
    """The tower's image processor settings (mean, std, resample, rescale) as LlavaNext's AnyRes image processor:
    tiles of the tower's size, no center crop, tile lists padded per batch."""
    return LlavaNextImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_size={"height": tile, "width": tile},
        do_center_crop=False,
        resample=image_processor.resample,
        do_rescale=image_processor.do_rescale,
        rescale_factor=image_processor.rescale_factor,
        do_normalize=image_processor.do_normalize,
        image_mean=image_processor.image_mean,
        image_std=image_processor.image_std,
        image_grid_pinpoints=[list(p) for p in pinpoints],
        do_pad=True,
    )


def image_hw(image) -> tuple[int, int]:
    """(height, width) of a PIL image, an HWC array, or a CHW array (1 or 3 channels first)."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    array = np.asarray(image)  # HWC from load_rgb, or a CHW float array passed through
    return tuple(array.shape[1:3]) if array.ndim == 3 and array.shape[0] in (1, 3) else tuple(array.shape[:2])


def process_on_canvases(image_processor, images: list, canvases: list, **kwargs) -> dict:
    """Each image through LlavaNext's image processor on its own canvas ([h, w]), the tile lists zero-padded to the
    longest (as LlavaNext's do_pad), plus image_sizes and the (rows, cols) image_grids."""
    kwargs = {**kwargs, "return_tensors": None, "do_pad": False}
    tiles, sizes = [], []
    for image, canvas in zip(images, canvases):
        out = image_processor([image], image_grid_pinpoints=[canvas], **kwargs)
        tiles.append(np.asarray(out["pixel_values"][0]))
        sizes.append(list(out["image_sizes"][0]))
    longest = max(len(t) for t in tiles)
    tile = image_processor.size["height"]
    return {
        # [N_img, max_tiles, 3, tile, tile]
        "pixel_values": np.stack([np.pad(t, ((0, longest - len(t)), (0, 0), (0, 0), (0, 0))) for t in tiles]),
        "image_sizes": np.array(sizes, dtype=np.int64),  # [N_img, 2] original (h, w)
        "image_grids": np.array([[c[0] // tile, c[1] // tile] for c in canvases], dtype=np.int64),  # [N_img, 2]
    }
