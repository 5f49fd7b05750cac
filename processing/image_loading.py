"""Images from anywhere (PIL, numpy, path, URL, base64) -> upright RGB, transparency on white. Ships as remote code
next to processing_minillava.py, so standard library, numpy and PIL only."""

import base64
import binascii
import io
import os
import struct
import urllib.request

import numpy as np
from PIL import Image, ImageOps

URL_TIMEOUT_S = 10  # an image URL that never answers must not hang a batch
# What decoding one bad image raises: PIL's UnidentifiedImageError and a truncated file are OSError (or SyntaxError),
# a broken header struct.error or EOFError, more pixels than PIL allows DecompressionBombError, an empty or missing
# value ValueError / TypeError. The training collator, the data check and run_eval catch exactly these.
IMAGE_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


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


def open_stored(image: dict) -> Image.Image:
    """A datasets `Image(decode=False)` value ({"bytes", "path"}) -> PIL image, fully decoded (a truncated file raises
    here, not later inside the image processor). Empty bytes and no path is an error: a 0-byte file, not "no bytes"."""
    data, path = image.get("bytes"), image.get("path")
    if data is not None:
        if not data:
            raise ValueError(f"the image holds 0 bytes (path {path!r}): an empty file, not an image")
        opened = Image.open(io.BytesIO(data))
    elif path:
        opened = Image.open(path)
    else:
        raise ValueError(f"the image has neither bytes nor a path ({image!r:.80})")
    opened.load()
    return opened


def load_images(images) -> list[Image.Image]:
    """A row's images (None, or a list of PIL images / datasets' undecoded {"bytes", "path"} dicts) -> upright RGB.
    Raises one of IMAGE_DECODE_ERRORS for an image that cannot be read (None included)."""
    return [to_rgb(open_stored(image) if isinstance(image, dict) else image) for image in images or []]


def map_images(images, fn):
    """`fn` on every image of a (nested) list of images, keeping the nesting (one list per sample)."""
    if isinstance(images, (list, tuple)):
        return [map_images(item, fn) for item in images]
    return fn(images)
