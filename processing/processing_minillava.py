"""MiniLlavaProcessor: the vision tower's image processor + the LLM's tokenizer, as a standard transformers processor.

Like LlavaProcessor: each image token in the text is expanded to `num_image_tokens` placeholders before tokenizing,
every tokenizer kwarg (padding, padding_side, truncation, max_length, return_tensors) reaches the tokenizer, and the
chat template is a multimodal Jinja template, so the inherited `apply_chat_template` (images given inline, by path or
URL) works unchanged. Ships to the Hub as remote code, so it is self-contained: torch, transformers and PIL only.
"""

import base64
import binascii
import contextvars
import io
import math
import os
import urllib.request

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoTokenizer, LlavaNextImageProcessorPil, ProcessorMixin
from transformers.image_processing_utils import select_best_resolution
from transformers.image_utils import make_flat_list_of_images
from transformers.utils import logging

logger = logging.get_logger(__name__)

IMAGE_POSITIONS = ("prefix", "user_turn")
# Added to the tokenizer only when it reserves no image token (the model config's choice, see choose_image_token).
# Control-token shaped, so a question that says "<image>" stays plain text.
DEFAULT_IMAGE_TOKEN = "<|image|>"
URL_TIMEOUT_S = 10  # an image URL that never answers must not hang a batch
# AnyRes: the canvas ([h, w]) chosen for each image of the current __call__ (its samples' token budget needs the text,
# which ProcessorMixin does not hand to _process_images); a ContextVar so concurrent calls (threads) never mix.
_CANVAS_PLAN = contextvars.ContextVar("minillava_canvas_plan", default=None)

# The preamble rewrites HF multimodal messages (content = list of parts) into plain-text messages, then the LLM's own
# template renders them. user_turn: each image part becomes the image token where it sits, parts joined by newlines.
# prefix: image parts are dropped from the messages and all image tokens open the sequence.
_PREAMBLE_BEGIN = "{#- minillava preamble: image_position="
_PREAMBLE_END = "{#- minillava preamble end #}"
_PREAMBLE_BODY = (
    "{{%- set mm = namespace(messages=[], images=0) %}}\n"
    "{{%- for message in messages %}}\n"
    "{{%- if message['content'] is string or message['content'] is none %}}\n"
    "{{%- set mm.messages = mm.messages + [message] %}}\n"
    "{{%- else %}}\n"
    "{{%- set parts = namespace(texts=[]) %}}\n"
    "{{%- for part in message['content'] %}}\n"
    "{{%- if part['type'] in ('image', 'image_url') %}}\n"
    "{{%- set mm.images = mm.images + 1 %}}\n"
    "{user_turn_image}"
    "{{%- elif part['type'] == 'text' %}}\n"
    "{{%- set parts.texts = parts.texts + [part['text']] %}}\n"
    "{{%- else %}}{{{{ raise_exception('Unsupported content part type ' ~ part['type']) }}}}\n"
    "{{%- endif %}}\n"
    "{{%- endfor %}}\n"
    "{{%- set mm.messages = mm.messages + [dict(message, content=parts.texts | join('\\n'))] %}}\n"
    "{{%- endif %}}\n"
    "{{%- endfor %}}\n"
    "{{%- set messages = mm.messages %}}\n"
    "{prefix_images}"
)


def build_chat_template(llm_template: str, image_token: str, image_position: str) -> str:
    """The processor's multimodal template: the preamble for `image_position`, then the LLM's own template."""
    if image_position not in IMAGE_POSITIONS:
        raise ValueError(f"Unknown image_position={image_position!r}; allowed values: {list(IMAGE_POSITIONS)}.")
    token = image_token.replace("'", "\\'")
    llm_template = strip_preamble(llm_template)
    user_turn = image_position == "user_turn"
    preamble = (
        _PREAMBLE_BEGIN
        + image_position
        + " #}\n"
        + _PREAMBLE_BODY.format(
            user_turn_image=f"{{%- set parts.texts = parts.texts + ['{token}'] %}}\n" if user_turn else "",
            prefix_images="" if user_turn else f"{{{{- '{token}' * mm.images }}}}\n",
        )
    )
    return preamble + _PREAMBLE_END + "\n" + llm_template


def strip_preamble(template: str) -> str:
    """The LLM's own template inside a processor template (unchanged when it has no preamble)."""
    if template.startswith(_PREAMBLE_BEGIN) and _PREAMBLE_END in template:
        return template.split(_PREAMBLE_END + "\n", 1)[1]
    return template


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


# What our recipes teach the model to say when the answer is not in the image; a model evaluated with run_eval.py
# carries its own in generation_config.abstain_answer, next to the fitted abstain_threshold.
ABSTAIN_ANSWER = "unanswerable"
# Why an answer is withheld, in plain words (the Space shows these; run_eval counts them).
ABSTAIN_REASONS = {
    "model_said_so": "the model said the answer is not in the image",
    "empty": "the model gave no answer",
    "not_confident": "the model was not confident enough",
}


def answer_logprobs(tokens: torch.Tensor, logits: tuple[torch.Tensor, ...], stop_ids) -> list[list[float]]:
    """Per row, the log-probs of the generated answer tokens up to (excluding) the first stop token.

    tokens: [B, T] new tokens from generate(); logits: T tensors [B, V], the RAW logits of each step
    (`output_logits=True`), so repetition penalties or other logits processors never change the confidence.
    """
    stop_ids = set(stop_ids)
    logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in logits], dim=1)  # [B, T, V]
    chosen = logprobs.gather(-1, tokens[:, : logprobs.shape[1], None].long().to(logprobs.device)).squeeze(-1)
    rows = []
    for row_tokens, row_logprobs in zip(tokens.tolist(), chosen.tolist()):
        kept = []
        for token, logprob in zip(row_tokens, row_logprobs):
            if token in stop_ids:
                break
            kept.append(logprob)
        rows.append(kept)
    return rows


def confidence_from_logprobs(logprobs: list[float]) -> float:
    """exp(mean token log-prob): the geometric-mean token probability, in [0, 1]; 0.0 for an empty answer."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0


def normalize_abstention(answer: str) -> str:
    """Case-folded, whitespace and trailing . ! ? stripped (as metrics/abstention's `is_abstention`)."""
    return answer.casefold().strip().rstrip(".!?").strip()


def abstention_reason(answer: str, confidence: float, threshold: float, abstain_answer: str = ABSTAIN_ANSWER):
    """A key of ABSTAIN_REASONS when the answer is withheld, else None. The model's own word comes first: an
    "unanswerable" said with confidence 0.9 is the model abstaining, not a confident answer."""
    said = normalize_abstention(answer)
    if said == abstain_answer.casefold():
        return "model_said_so"
    if not said:
        return "empty"
    return "not_confident" if confidence < threshold else None


def is_abstained(answer: str, confidence: float, threshold: float, abstain_answer: str = ABSTAIN_ANSWER) -> bool:
    """The final decision: the model said the abstention answer, said nothing, or is less confident than threshold."""
    return abstention_reason(answer, confidence, threshold, abstain_answer) is not None


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
    if isinstance(image, Image.Image):
        return image.height, image.width
    array = np.asarray(image)  # HWC from load_rgb, or a CHW float array passed through
    return tuple(array.shape[1:3]) if array.ndim == 3 and array.shape[0] in (1, 3) else tuple(array.shape[:2])


def _map_images(images, fn):
    if isinstance(images, (list, tuple)):
        return [_map_images(item, fn) for item in images]
    return fn(images)


class MiniLlavaProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor: the vision tower's image processor (SigLIP / CLIP).
        tokenizer: the LLM's tokenizer (holding `image_token`).
        chat_template (`str`): the LLM's Jinja template, or one this class built; the multimodal preamble for
            `image_position` is put in front of the LLM's own template.
        num_image_tokens (`int`): placeholders per image; must equal the model config's `num_image_tokens`.
        image_position (`str`): "user_turn" (placeholders where the image part sits in the chat) or "prefix" (all
            placeholders first, then the whole chat).
        image_token (`str`): the placeholder token; a special token of the tokenizer whose id is the model config's
            `image_token_id`.
        tile_feature_side (`int` or `None`): AnyRes only (the image processor is then LlavaNext's, holding
            `image_grid_pinpoints`): one tile's token-grid side after the projector (config.tile_feature_side).
        max_image_tokens (`int` or `None`): AnyRes only, image tokens per sample; grids shrink until a sample fits.
    """

    # The chat template already holds the LLM's special tokens, so none are added (no second BOS); a call can
    # override it. Padding and tensors are the caller's choice, as with LlavaProcessor: TRL's GRPO tokenizes
    # prompts unpadded and pads them itself.
    text_kwargs = {"add_special_tokens": False}

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        num_image_tokens: int | None = None,
        image_position: str = "user_turn",
        image_token: str = DEFAULT_IMAGE_TOKEN,
        tile_feature_side: int | None = None,
        max_image_tokens: int | None = None,
        **kwargs,
    ):
        if num_image_tokens is None or int(num_image_tokens) <= 0:
            raise ValueError(
                f"num_image_tokens must be a positive int, got {num_image_tokens!r}; pass the model config's "
                "`num_image_tokens` (MiniLlavaProcessor.from_backbones(..., config=model.config) does)."
            )
        if image_position not in IMAGE_POSITIONS:
            raise ValueError(f"Unknown image_position={image_position!r}; allowed values: {list(IMAGE_POSITIONS)}.")
        image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if (
            image_token_id is None
            or image_token_id == tokenizer.unk_token_id
            or tokenizer.tokenize(image_token) != [image_token]
        ):
            raise ValueError(
                f"image_token={image_token!r} is not a single special token of the tokenizer; build the processor "
                "with MiniLlavaProcessor.from_backbones(..., config=model.config), which adds it when needed."
            )
        if tile_feature_side is not None and not getattr(image_processor, "image_grid_pinpoints", None):
            raise ValueError(
                f"tile_feature_side={tile_feature_side} turns AnyRes on, but {type(image_processor).__name__} has no "
                "image_grid_pinpoints; build the processor with MiniLlavaProcessor.from_backbones(..., config=...)."
            )
        if max_image_tokens is not None and tile_feature_side is None:
            raise ValueError(f"max_image_tokens={max_image_tokens} needs AnyRes (tile_feature_side); drop it.")
        self.tile_feature_side = tile_feature_side
        self.max_image_tokens = max_image_tokens
        self.num_image_tokens = int(num_image_tokens)
        self.image_position = image_position
        self.image_token = image_token
        self.image_token_id = image_token_id
        if chat_template:
            chat_template = build_chat_template(chat_template, image_token, image_position)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_backbones(
        cls,
        vision_name_or_path: str,
        llm_name_or_path: str,
        *,
        config,
        image_position: str | None = None,
        chat_template: str | None = None,
    ) -> "MiniLlavaProcessor":
        """Build from the vision tower's image processor and the LLM's tokenizer + chat template.

        `config` (the model's MiniLlavaConfig) fixes the number of placeholders per image, the layout and the
        placeholder id; when that id lies past the tokenizer's vocabulary, DEFAULT_IMAGE_TOKEN is added to the
        tokenizer as a special token (the embedding matrix is never resized: the model looks the id up as 0).
        """
        image_processor = AutoImageProcessor.from_pretrained(vision_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(llm_name_or_path)
        chat_template = chat_template or tokenizer.chat_template
        if not chat_template:
            raise ValueError(f"{llm_name_or_path} has no chat template; pass chat_template= (a Jinja string).")
        if tokenizer.pad_token is None:  # Llama 3 has none; padding positions are masked, eos is the usual stand-in
            tokenizer.pad_token = tokenizer.eos_token
        image_token_id = config.image_token_id
        if image_token_id is None:
            raise ValueError("config.image_token_id is None; build the model with from_backbones first.")
        if image_token_id >= len(tokenizer):
            tokenizer.add_tokens([DEFAULT_IMAGE_TOKEN], special_tokens=True)
        image_token = tokenizer.convert_ids_to_tokens(image_token_id)
        if image_token is None or tokenizer.convert_tokens_to_ids(image_token) != image_token_id:
            raise ValueError(
                f"config.image_token_id={image_token_id} is not a token of {llm_name_or_path}'s tokenizer "
                f"({len(tokenizer)} tokens); was the model built from another LLM?"
            )
        anyres = getattr(config, "image_grid_pinpoints", None) is not None
        if anyres:
            tile = config.vision_config.image_size
            image_processor = anyres_image_processor(image_processor, tile, config.image_grid_pinpoints)
        return cls(
            image_processor,
            tokenizer,
            chat_template=chat_template,
            num_image_tokens=config.num_image_tokens,
            image_position=image_position or config.image_position,
            image_token=image_token,
            tile_feature_side=config.tile_feature_side if anyres else None,
            max_image_tokens=config.max_image_tokens if anyres else None,
        )

    def save_pretrained(self, save_directory, **kwargs):
        # transformers 5.24 keeps how the tokenizer was loaded (is_local, local_files_only) in its init kwargs and
        # writes them out; they describe this machine, not the model, so they stay out of a saved or pushed folder.
        for key in ("is_local", "local_files_only"):
            self.tokenizer.init_kwargs.pop(key, None)
        return super().save_pretrained(save_directory, **kwargs)

    def set_image_position(self, image_position: str) -> None:
        """Switch the layout (e.g. a stage-3 ablation starting from a stage-1 model): rebuilds the chat template."""
        self.chat_template = build_chat_template(self.chat_template, self.image_token, image_position)
        self.image_position = image_position

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Images from paths/URLs are loaded, and every image made upright RGB with transparency on white."""
        if images is not None:
            images = _map_images(images, load_rgb)
        return super().prepare_inputs_layout(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """transformers' count check, plus the likely cause when text holds more image tokens than images."""
        try:
            super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
        except ValueError as error:
            if self.image_token not in str(error):
                raise
            raise ValueError(
                f"{error} Each image token {self.image_token!r} in the text stands for one image. If a message's text "
                f"itself contains {self.image_token!r}, render with processor.apply_chat_template(..., tokenize=True, "
                "sanitize_control_tokens=True) so it stays plain text."
            ) from None

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens

    @property
    def anyres(self) -> bool:
        return self.tile_feature_side is not None

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """ProcessorMixin's; with AnyRes the canvases are planned first, per sample of `text` (the token budget)."""
        if not self.anyres or images is None:
            return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        images = _map_images(images, load_rgb)
        texts = [text] if isinstance(text, str) else text
        per_sample = None if texts is None else [t.count(self.image_token) for t in texts]
        sizes = [image_hw(image) for image in make_flat_list_of_images(images)]
        token = _CANVAS_PLAN.set(
            self.plan_canvases(sizes, per_sample) if sum(per_sample or [0]) == len(sizes) else None
        )
        try:
            return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        finally:
            _CANVAS_PLAN.reset(token)

    def plan_canvases(self, image_sizes, images_per_sample=None) -> list[tuple[list[int], int]]:
        """(canvas [h, w], tokens) per image: LlavaNext's select_best_resolution over image_grid_pinpoints; with
        max_image_tokens, a sample over budget gets only pinpoints of fewer tiles, fewer until it fits (logged)."""
        pinpoints, tile = self.image_processor.image_grid_pinpoints, self.image_processor.size["height"]
        tiles_of = {tuple(p): (p[0] // tile) * (p[1] // tile) for p in pinpoints}
        limits = sorted(set(tiles_of.values()), reverse=True)
        counts = images_per_sample if images_per_sample is not None else [1] * len(image_sizes)
        plan, start = [], 0
        for sample, count in enumerate(counts):
            sizes = [tuple(int(v) for v in size) for size in image_sizes[start : start + count]]
            start += count
            for limit in limits:
                allowed = [p for p in pinpoints if tiles_of[tuple(p)] <= limit]
                canvases = [list(select_best_resolution(size, allowed)) for size in sizes]
                tokens = [anyres_tokens(size, c, tile, self.tile_feature_side) for size, c in zip(sizes, canvases)]
                if self.max_image_tokens is None or sum(tokens) <= self.max_image_tokens:
                    break
            else:
                raise ValueError(
                    f"Sample {sample}: its {count} image(s) {sizes} take {sum(tokens)} image tokens even on the "
                    f"smallest grids, above max_image_tokens={self.max_image_tokens}; raise max_image_tokens or send "
                    "fewer images per sample."
                )
            if limit != limits[0]:
                grids = [f"{c[0] // tile}x{c[1] // tile}" for c in canvases]
                logger.warning(
                    f"max_image_tokens={self.max_image_tokens}: sample {sample}'s image(s) {sizes} (h, w) shrunk to "
                    f"at most {limit} tiles: grids {grids} (rows x cols), {sum(tokens)} image tokens {tokens}."
                )
            plan.extend(zip(canvases, tokens))
        return plan

    def _process_images(self, images, **kwargs):
        """AnyRes: each image through LlavaNext's image processor on its planned canvas, the tile lists zero-padded
        to the batch's longest (as LlavaNext's do_pad), plus image_sizes and the (rows, cols) image_grids."""
        if not self.anyres:
            return super()._process_images(images, **kwargs)
        images = make_flat_list_of_images(images)
        plan = _CANVAS_PLAN.get() or self.plan_canvases([image_hw(image) for image in images])
        kwargs = {**kwargs, "return_tensors": None, "do_pad": False}
        tiles, sizes = [], []
        for image, (canvas, _) in zip(images, plan):
            out = self.image_processor([image], image_grid_pinpoints=[canvas], **kwargs)
            tiles.append(np.asarray(out["pixel_values"][0]))
            sizes.append(list(out["image_sizes"][0]))
        longest = max(len(t) for t in tiles)
        pixel_values = np.stack([np.pad(t, ((0, longest - len(t)), (0, 0), (0, 0), (0, 0))) for t in tiles])
        tile = self.image_processor.size["height"]
        data = {
            "pixel_values": pixel_values,  # [N_img, max_tiles, 3, tile, tile]
            "image_sizes": np.array(sizes, dtype=np.int64),  # [N_img, 2] original (h, w)
            "image_grids": np.array([[c[0] // tile, c[1] // tile] for c, _ in plan], dtype=np.int64),  # [N_img, 2]
        }
        return data, [self.image_token * n for _, n in plan]

    def expand_image_tokens(self, text: str, image_sizes=None) -> str:
        """`text` with each image token expanded to its placeholders (what `__call__` tokenizes): `num_image_tokens`
        each, or with AnyRes the planned count of each image, whose (height, width) `image_sizes` then gives."""
        if not self.anyres:
            return text.replace(self.image_token, self.image_token * self.num_image_tokens)
        if image_sizes is None or len(image_sizes) != text.count(self.image_token):
            raise ValueError(
                f"AnyRes expands each image by its size: pass image_sizes (one (height, width) per image token), got "
                f"{image_sizes!r} for {text.count(self.image_token)} image tokens."
            )
        parts = text.split(self.image_token)
        counts = [n for _, n in self.plan_canvases(image_sizes, [len(image_sizes)])]
        return parts[0] + "".join(self.image_token * n + part for n, part in zip(counts, parts[1:]))

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        """Placeholders per image, for serving engines that ask the processor (as LlavaProcessor and
        LlavaNextProcessor answer); with AnyRes each image is planned as a sample of its own."""
        from transformers.processing_utils import MultiModalData

        data = {}
        if image_sizes is not None:
            if self.anyres:
                counts = [n for _, n in self.plan_canvases(image_sizes)]
            else:
                counts = [self.num_image_tokens] * len(image_sizes)
            data = {"num_image_tokens": counts, "num_image_patches": [1] * len(image_sizes)}
        return MultiModalData(**data)

    abstain_reasons = ABSTAIN_REASONS  # reason key -> plain words, for whoever shows a decision

    def abstention_reason(self, answer: str, confidence: float, threshold: float, generation_config=None):
        """The key of ABSTAIN_REASONS that withholds `answer` under `threshold`, or None: the rule post_process_answers
        applies, for re-deciding without generating again (e.g. a threshold slider moved)."""
        abstain_answer = getattr(generation_config, "abstain_answer", None) or ABSTAIN_ANSWER
        return abstention_reason(answer, confidence, threshold, abstain_answer)

    def post_process_answers(
        self,
        generated,
        prompt_length: int,
        generation_config=None,
        threshold: float | None = None,
        stop_token_ids: list[int] | None = None,
    ) -> list[dict]:
        """`model.generate(..., output_logits=True, return_dict_in_generate=True)` -> one dict per row:

        `answer` (the new text up to the stop token), `confidence` (geometric-mean probability of its tokens, from
        the raw logits), `num_tokens`, `abstained` and `reason` (a key of ABSTAIN_REASONS, or None). The threshold
        and abstention answer are the model's (`generation_config.abstain_threshold` / `abstain_answer`, saved by
        run_eval.py) unless `threshold` is given; stop tokens are `stop_token_ids`, else the generation config's
        `eos_token_id` and the tokenizer's eos.
        """
        if getattr(generated, "logits", None) is None:
            raise ValueError("Generate with output_logits=True, return_dict_in_generate=True to get confidences.")
        if stop_token_ids is None:
            eos = getattr(generation_config, "eos_token_id", None)
            stop_token_ids = [*(eos if isinstance(eos, (list, tuple)) else [eos]), self.tokenizer.eos_token_id]
        stop_ids = {i for i in stop_token_ids if i is not None}
        if threshold is None:
            threshold = float(getattr(generation_config, "abstain_threshold", None) or 0.0)
        new_tokens = generated.sequences[:, prompt_length:]  # [B, T_new]
        results = []
        for tokens, logprobs in zip(new_tokens, answer_logprobs(new_tokens, generated.logits, stop_ids)):
            answer = self.tokenizer.decode(tokens[: len(logprobs)], skip_special_tokens=True).strip()
            confidence = confidence_from_logprobs(logprobs)
            reason = self.abstention_reason(answer, confidence, threshold, generation_config)
            results.append({"answer": answer, "confidence": confidence, "num_tokens": len(logprobs),
                            "abstained": reason is not None, "reason": reason, "threshold": threshold})  # fmt: skip
        return results

    @property
    def model_input_names(self) -> list[str]:
        anyres = ["image_sizes", "image_grids"] if self.anyres else []
        return ["input_ids", "attention_mask", "pixel_values", *anyres]


__all__ = ["MiniLlavaProcessor"]
