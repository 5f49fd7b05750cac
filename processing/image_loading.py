"""Images from anywhere (PIL, numpy, path, URL, base64) -> upright RGB, transparency on white. Ships as remote code
next to processing_minillava.py, so standard library, numpy and PIL only."""

import base64
import binascii
import io
import os
import urllib.request

import numpy as np
from PIL import Image, ImageOps

URL_TIMEOUT_S = 10  # an image URL that never answers must not hang a batch


def to_rgb(image) -> Image.Image:
    """Any PIL mode (RGBA, LA, P, L, CMYK, I;16, ...) or HWC uint8 array -> upright RGB.

    EXIF orientation is applied, transparency goes on white (a plain `convert("RGB")` turns a transparent PNG with
    black text all black) and 16/32-bit greyscale is scaled to 8 bits (convert would clip it to white).
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Images must be PIL.Image.Image or numpy arrays, got {type(image).__name__}.")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # Absolute levels, never stretched by the image's own range (a blank 16-bit page stays white): 16-bit
        # integers (PIL opens 16-bit PNGs as I;16 or I) scale by 257, floats in [0, 1] by 255, the rest clip.
        array = np.asarray(image, dtype=np.float32)
        if image.mode == "F" and array.max() <= 1.0:
            array = array * 255
        elif image.mode != "F" and (image.mode.startswith("I;16") or array.max() > 255):
            array = array / 257
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(image) -> Image.Image:
    """A PIL image, numpy array, local path, URL or base64 string -> upright RGB (see `to_rgb`).

    Paths, URLs (with a timeout) and base64 are read as bytes here, not through transformers' `load_image`, whose
    early `convert("RGB")` would turn a transparent PNG black.
    """
    if isinstance(image, str):
        image = Image.open(image if os.path.isfile(image) else io.BytesIO(read_image_bytes(image)))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4))):
            return image  # a CHW or float array: the image processor reads it as it is
        image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image  # PIL has no HxWx1 mode
    return to_rgb(image)


def read_image_bytes(source: str) -> bytes:
    """The bytes of an http(s) URL or a (data-URI) base64 string; anything else is a clear error."""
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=URL_TIMEOUT_S) as response:
            return response.read()
    try:
        return base64.b64decode(source.split(",", 1)[1] if source.startswith("data:image/") else source, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"Incorrect image source {source[:80]!r}: not an existing file, an http(s) URL or base64 image data."
        ) from None


def map_images(images, fn):
    """`fn` on every image of a (nested) list of images, keeping the nesting (one list per sample)."""
    if isinstance(images, (list, tuple)):
        return [map_images(item, fn) for item in images]
    return fn(images)
