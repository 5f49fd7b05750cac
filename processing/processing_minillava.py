"""MiniLlavaProcessor: the vision tower's image processor + the LLM's tokenizer and chat template.

It lays out the whole merged sequence: each image becomes `num_image_tokens` slots marked in `image_mask`, filled
with the pad id in `input_ids` (no vocabulary token is added; the model writes image features into those slots).
Ships to the Hub as remote code, so it is self-contained: torch, transformers and PIL only.
"""

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin

IMAGE_POSITIONS = ("prefix", "user_turn")


def to_rgb(image) -> Image.Image:
    """Any PIL mode (RGBA, LA, P, L, CMYK, I;16, ...) or HWC uint8 array -> RGB; transparency goes on white."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Images must be PIL.Image.Image or numpy arrays, got {type(image).__name__}.")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # 16/32-bit greyscale: scale to 8 bits first
        array = np.asarray(image, dtype=np.float64)
        span = max(float(array.max() - array.min()), 1e-12)
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def _flatten_images(images) -> list:
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    return [im for item in images for im in _flatten_images(item)]


class MiniLlavaProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor: the vision tower's image processor (SigLIP / CLIP).
        tokenizer: the LLM's tokenizer.
        chat_template (`str`): Jinja chat template; `from_backbones` takes the LLM's own (ChatML for Qwen, ...).
        num_image_tokens (`int`): sequence slots per image; must equal the model config's `num_image_tokens`.
        image_position (`str`): "user_turn" (slots where the image part sits in the chat) or "prefix" (all image
            slots first, then the whole chat, as the original seed did).
        image_token (`str`): the text marker an image part renders to before tokenization (never tokenized).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        num_image_tokens: int | None = None,
        image_position: str = "user_turn",
        image_token: str = "<image>",
        **kwargs,
    ):
        if num_image_tokens is None or int(num_image_tokens) <= 0:
            raise ValueError(
                f"num_image_tokens must be a positive int, got {num_image_tokens!r}; pass the model config's "
                "`num_image_tokens` (MiniLlavaProcessor.from_backbones(..., config=model.config) does)."
            )
        if image_position not in IMAGE_POSITIONS:
            raise ValueError(f"Unknown image_position={image_position!r}; allowed values: {list(IMAGE_POSITIONS)}.")
        self.num_image_tokens = int(num_image_tokens)
        self.image_position = image_position
        self.image_token = image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_backbones(
        cls,
        vision_name_or_path: str,
        llm_name_or_path: str,
        *,
        config=None,
        num_image_tokens: int | None = None,
        image_position: str | None = None,
        chat_template: str | None = None,
        **kwargs,
    ) -> "MiniLlavaProcessor":
        """Build from the vision tower's image processor and the LLM's tokenizer + chat template.

        Give the model `config` (a MiniLlavaConfig) or `num_image_tokens` (+ `image_position`) so that processor and
        model agree on the number of image slots.
        """
        if config is not None:
            if num_image_tokens is not None and num_image_tokens != config.num_image_tokens:
                raise ValueError(
                    f"num_image_tokens={num_image_tokens} disagrees with config.num_image_tokens="
                    f"{config.num_image_tokens}; drop the argument to use the config's value."
                )
            num_image_tokens = config.num_image_tokens
            image_position = image_position or config.image_position
        image_processor = AutoImageProcessor.from_pretrained(vision_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(llm_name_or_path)
        chat_template = chat_template or tokenizer.chat_template
        if not chat_template:
            raise ValueError(f"{llm_name_or_path} has no chat template; pass chat_template= (a Jinja string).")
        return cls(
            image_processor,
            tokenizer,
            chat_template=chat_template,
            num_image_tokens=num_image_tokens,
            image_position=image_position or "user_turn",
            **kwargs,
        )

    @property
    def pad_token_id(self) -> int:
        """Id used for padding and for image slots (masked out either way); eos when the LLM has no pad (Llama 3)."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def flatten_messages(self, conversation: list[dict]) -> list[dict]:
        """HF multimodal messages -> plain-text messages: image parts become the image marker, parts join by '\\n'."""
        flat = []
        for message in conversation:
            content = message["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image":
                        parts.append(self.image_token)
                    elif part.get("type") == "text":
                        parts.append(part["text"])
                    else:
                        raise ValueError(f"Unsupported content part type {part.get('type')!r}; use 'image' or 'text'.")
                content = "\n".join(parts)
            flat.append({**message, "content": content})
        return flat

    def apply_chat_template(
        self, conversation, add_generation_prompt: bool = False, tokenize: bool = False, return_dict: bool = False,
        **kwargs,
    ):  # fmt: skip
        """Render HF multimodal messages with the processor's chat template (the LLM's own, flattened to text).

        With `tokenize=True`, images found in the image parts (`{"type": "image", "image": PIL}`) are processed too.
        """
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        texts = [
            self.tokenizer.apply_chat_template(
                self.flatten_messages(conv),
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **kwargs,
            )
            for conv in conversations
        ]
        if not tokenize:
            return texts if batched else texts[0]
        images = [
            part["image"]
            for conv in conversations
            for msg in conv
            if isinstance(msg["content"], list)
            for part in msg["content"]
            if part.get("type") == "image" and part.get("image") is not None
        ]
        out = self(images=images or None, text=texts)
        return out if return_dict else out["input_ids"]

    def __call__(
        self, images=None, text=None, padding_side: str | None = None, return_tensors: str | None = "pt", **kwargs
    ):
        """Text with `image_token` markers (+ the images, in reading order) -> model inputs.

        Returns `input_ids`, `attention_mask`, `image_mask` (True on image slots) and, with images, `pixel_values`.
        Rows are padded to the longest; `padding_side` defaults to the tokenizer's (right for training; use
        "left" for batched generation).
        """
        if text is None:
            raise ValueError("text is required: render a conversation with processor.apply_chat_template first.")
        texts = [text] if isinstance(text, str) else list(text)
        images = [to_rgb(im) for im in _flatten_images(images)]
        markers = [t.count(self.image_token) for t in texts]
        if sum(markers) != len(images):
            raise ValueError(
                f"The text has {sum(markers)} {self.image_token} marker(s) (per sample: {markers}) but {len(images)} "
                f"image(s) were given; give exactly one image per {{'type': 'image'}} part, in order."
            )
        rows = [self.layout_text(t, n) for t, n in zip(texts, markers)]
        data = self.pad_rows(rows, padding_side or self.tokenizer.padding_side, return_tensors)
        if images:
            data["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return BatchFeature(data=data, tensor_type=None)

    def layout_text(self, text: str, n_images: int) -> tuple[list[int], list[bool]]:
        """One sample's token ids and image-slot mask, with `num_image_tokens` slots per image marker."""
        slots = [self.pad_token_id] * self.num_image_tokens
        if self.image_position == "prefix":
            text = text.replace(self.image_token + "\n", "").replace(self.image_token, "")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return slots * n_images + ids, [True] * (len(slots) * n_images) + [False] * len(ids)
        segments = text.split(self.image_token)
        seg_ids = self.tokenizer(segments, add_special_tokens=False)["input_ids"]  # the chat template has the specials
        ids, mask = list(seg_ids[0]), [False] * len(seg_ids[0])
        for seg in seg_ids[1:]:
            ids += slots + list(seg)
            mask += [True] * len(slots) + [False] * len(seg)
        return ids, mask

    def pad_rows(self, rows, side: str, return_tensors):
        # tokenizer.pad knows nothing of image_mask, so rows are padded here (a few lines, all keys in step).
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        width = max(len(ids) for ids, _ in rows)
        out = {"input_ids": [], "attention_mask": [], "image_mask": []}
        for ids, mask in rows:
            for key, seq, value in (("input_ids", ids, self.pad_token_id), ("attention_mask", [1] * len(ids), 0),
                                    ("image_mask", mask, False)):  # fmt: skip
                fill = [value] * (width - len(ids))
                out[key].append(fill + seq if side == "left" else seq + fill)
        if return_tensors == "pt":
            out = {
                "input_ids": torch.tensor(out["input_ids"], dtype=torch.long),
                "attention_mask": torch.tensor(out["attention_mask"], dtype=torch.long),
                "image_mask": torch.tensor(out["image_mask"], dtype=torch.bool),
            }
        elif return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or None.")
        return out

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "image_mask", "pixel_values"]


__all__ = ["MiniLlavaProcessor"]
