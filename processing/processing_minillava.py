"""MiniLlavaProcessor: the vision tower's image processor + the LLM's tokenizer, as a standard transformers processor.

Like LlavaProcessor: each image token in the text is expanded to `num_image_tokens` placeholders before tokenizing,
every tokenizer kwarg (padding, padding_side, truncation, max_length, return_tensors) reaches the tokenizer, and the
chat template is a multimodal Jinja template, so the inherited `apply_chat_template` (images given inline, by path or
URL) works unchanged. Ships to the Hub as remote code with its sibling modules (relative imports, copied into the saved
folder by save_pretrained), so it is self-contained: torch, transformers, numpy and PIL only.
"""

import contextvars

from transformers import AutoImageProcessor, AutoTokenizer, ProcessorMixin
from transformers.image_processing_utils import select_best_resolution
from transformers.image_utils import make_flat_list_of_images
from transformers.utils import logging

from .answers import (
    ABSTAIN_ANSWER,
    ABSTAIN_REASONS,
    abstention_reason,
    answer_logprobs,
    confidence_from_logprobs,
    is_abstained,
    normalize_abstention,
)
from .anyres_processing import anyres_image_processor, anyres_tokens, image_hw, process_on_canvases
from .chat_templates import IMAGE_POSITIONS, build_chat_template
from .image_loading import load_rgb, map_images, to_rgb

logger = logging.get_logger(__name__)

# Added to the tokenizer only when it reserves no image token (the model config's choice, see choose_image_token).
# Copied from modeling_minillava.configuration_minillava.DEFAULT_IMAGE_TOKEN
DEFAULT_IMAGE_TOKEN = "<|image|>"  # control-token shaped, so a question that says "<image>" stays plain text
# AnyRes: the canvas ([h, w]) chosen for each image of the current __call__ (its samples' token budget needs the text,
# which ProcessorMixin does not hand to _process_images); a ContextVar so concurrent calls (threads) never mix.
_CANVAS_PLAN = contextvars.ContextVar("minillava_canvas_plan", default=None)


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
            images = map_images(images, load_rgb)
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
        images = map_images(images, load_rgb)
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
        """AnyRes: each image through LlavaNext's image processor on its planned canvas (see process_on_canvases)."""
        if not self.anyres:
            return super()._process_images(images, **kwargs)
        images = make_flat_list_of_images(images)
        plan = _CANVAS_PLAN.get() or self.plan_canvases([image_hw(image) for image in images])
        data = process_on_canvases(self.image_processor, images, [canvas for canvas, _ in plan], **kwargs)
        return data, [self.image_token * n for _, n in plan]

    def expand_image_tokens(self, text: str, image_sizes=None, counts=None) -> str:
        """`text` with its k-th image token expanded to counts[k] placeholders (what `__call__` tokenizes). Without
        `counts`: `num_image_tokens` each, or with AnyRes each image's planned count, its (height, width) taken from
        `image_sizes`. Extra counts are unused (the collator plans a whole row, then expands its prompt)."""
        n_tokens = text.count(self.image_token)
        if counts is None and not self.anyres:
            counts = [self.num_image_tokens] * n_tokens
        elif counts is None:
            if image_sizes is None or len(image_sizes) != n_tokens:
                raise ValueError(
                    f"AnyRes expands each image by its size: pass image_sizes (one (height, width) per image token), "
                    f"got {image_sizes!r} for {n_tokens} image tokens."
                )
            counts = [n for _, n in self.plan_canvases(image_sizes, [len(image_sizes)])]
        if n_tokens > len(counts):  # never silently drop the text after an unplanned image
            raise ValueError(f"{n_tokens} image token(s) in the text but {len(counts)} placeholder count(s).")
        parts = text.split(self.image_token)
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
            results.append(
                {
                    "answer": answer,
                    "confidence": confidence,
                    "num_tokens": len(logprobs),
                    "abstained": reason is not None,
                    "reason": reason,
                    "threshold": threshold,
                }
            )
        return results

    @property
    def model_input_names(self) -> list[str]:
        anyres = ["image_sizes", "image_grids"] if self.anyres else []
        return ["input_ids", "attention_mask", "pixel_values", *anyres]


# Helpers that live in sibling modules stay importable from here, where the collator, metrics/confidence.py and the
# tests import them.
__all__ = [
    "MiniLlavaProcessor",
    "ABSTAIN_ANSWER",
    "ABSTAIN_REASONS",
    "answer_logprobs",
    "build_chat_template",
    "confidence_from_logprobs",
    "is_abstained",
    "load_rgb",
    "normalize_abstention",
    "to_rgb",
]
