"""MiniLlava: frozen vision tower -> projector -> any causal LM, images entering as virtual tokens via inputs_embeds.

Layout follows transformers' Llava (so TRL's fused LM-head loss, PEFT patterns and readers work unchanged):
`MiniLlavaForConditionalGeneration.model` (MiniLlavaModel: vision_tower, multi_modal_projector, language_model)
+ `lm_head`. The processor expands each image into `num_image_tokens` placeholder tokens (`config.image_token_id`);
the model overwrites their embeddings with the projected image features. The embedding matrix is never resized for
the placeholder, and the loss never targets it.
"""

import contextlib
import math
import os

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import logging

from .anyres import image_grid, pack_image_features
from .configuration_minillava import MiniLlavaConfig
from .projectors import PerceiverResampler, build_projector

logger = logging.get_logger(__name__)


def new_image_newline(hidden_size: int, dtype) -> nn.Parameter:
    """LlavaNext's image_newline: one [D] vector, normal with std 1/sqrt(D)."""
    return nn.Parameter(torch.randn(hidden_size, dtype=dtype) / math.sqrt(hidden_size))


def portable_name(name_or_path: str) -> str:
    """How saved files name a model or dataset they came from, never by an absolute path of this machine: a Hub id or
    a relative path as given; an absolute path relative to the working directory when it lies below it (e.g.
    outputs/offline/stage1 from the repo root), else by its folder name: one rule for configs, cards and records."""
    if not name_or_path or not os.path.isabs(name_or_path):
        return name_or_path
    relative = os.path.relpath(name_or_path)
    return relative if not relative.startswith("..") else os.path.basename(os.path.normpath(name_or_path))


def check_slots_per_image(mask: torch.Tensor, lengths: list[int], image_token_id: int) -> None:
    """Image i's features must fill the next `lengths[i]` placeholders (row-major, as masked_scatter fills them), all
    in one unbroken run; otherwise name the image and both numbers. Images whose placeholders touch (the prefix layout)
    share a run, so a wrong count there surfaces at the first image whose tokens would cross a run's end."""
    positions = mask.nonzero().tolist()  # [(row, col)]
    start = 0
    for index, length in enumerate(lengths):
        span = positions[start : start + length]
        if len(span) < length or span[-1][0] != span[0][0] or span[-1][1] - span[0][1] != length - 1:
            run, where = 0, "none are left"
            if start < len(positions):
                row, col = positions[start]
                while start + run < len(positions) and positions[start + run] == [row, col + run]:
                    run += 1
                where = f"the run at row {row}, position {col} holds {run}"
            raise ValueError(
                f"image {index} gives {length} feature tokens but its placeholders (id {image_token_id}) disagree: "
                f"{where}. The processor and model disagree on this image's tokens (image_grid_pinpoints, "
                "max_image_tokens, image_sizes), or truncation cut it; use the processor saved with this model."
            )
        start += length
    if start != len(positions):
        raise ValueError(
            f"input_ids hold {len(positions)} image placeholders (id {image_token_id}), but the {len(lengths)} images "
            f"give {start} feature tokens ({lengths}); an image token has no image or pixel_values lack images."
        )


class MiniLlavaPreTrainedModel(PreTrainedModel):
    config_class = MiniLlavaConfig
    config: MiniLlavaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["cache"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, PerceiverResampler):  # an explicit nn.Parameter the generic init does not know
            init.normal_(module.latents, std=getattr(self.config.text_config, "initializer_range", 0.02))
        if isinstance(module, MiniLlavaModel) and module.image_newline is not None:  # as LlavaNext
            init.normal_(module.image_newline, mean=0.0, std=1 / math.sqrt(self.config.text_config.hidden_size))


class MiniLlavaModel(MiniLlavaPreTrainedModel):
    """Vision tower + projector + the LLM's base model; returns hidden states over the whole merged sequence."""

    def __init__(self, config: MiniLlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_projector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.image_newline = None  # AnyRes only: the learned token closing each row of the stitched tile grid
        if config.anyres:
            self.image_newline = new_image_newline(config.text_config.hidden_size, self.dtype)
        # LLaVA convention: the tower is frozen unless a training recipe unfreezes it.
        self.vision_tower.requires_grad_(False)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def project_tiles(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] tower-sized images (or tiles) -> [N, T_tile, D_text]: tower, feature layer, projector."""
        frozen = not any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.no_grad() if frozen else contextlib.nullcontext():  # no activations kept for a frozen tower
            pixel_values = pixel_values.to(self.vision_tower.dtype)
            out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
            features = out.hidden_states[self.config.vision_feature_layer]  # [N, N_vis(+CLS), D_vision]
            if self.config.vision_feature_select_strategy == "default":
                features = features[:, 1:]  # drop CLS
        return self.multi_modal_projector(features)

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes=None, image_grids=None):
        """Single tile: [N_img, 3, H, W] -> [N_img, T_img, D_text].

        AnyRes: pixel_values [N_img, max_tiles, 3, H, W] (each image's base tile first, zero tiles after its own) or
        the real tiles concatenated [sum_tiles, 3, H, W]; image_sizes [N_img, 2] original (height, width);
        image_grids [N_img, 2] (rows, cols) of tiles, else derived from image_sizes as LlavaNext does. Returns one
        [T_i, D_text] tensor per image (LlavaNext's packing: base tokens, unpadded grid, a newline per row).
        """
        if not self.config.anyres:
            return self.project_tiles(pixel_values)
        if image_sizes is None:
            raise ValueError("AnyRes (config.image_grid_pinpoints) needs image_sizes next to pixel_values.")
        grids = self.anyres_grids(image_sizes, image_grids)
        n_tiles = [1 + rows * cols for rows, cols in grids]
        if pixel_values.dim() == 5:  # padded per image: keep each image's own tiles
            pixel_values = torch.cat([tiles[:n] for tiles, n in zip(pixel_values, n_tiles)], dim=0)
        elif pixel_values.dim() != 4:
            raise ValueError(f"AnyRes pixel_values must have 4 or 5 dims, got shape {tuple(pixel_values.shape)}.")
        if pixel_values.shape[0] != sum(n_tiles):
            raise ValueError(
                f"pixel_values hold {pixel_values.shape[0]} tiles, but image_sizes/image_grids call for "
                f"{sum(n_tiles)} ({n_tiles} per image, base tile included)."
            )
        features = self.project_tiles(pixel_values).split(n_tiles)  # per image [1 + rows*cols, T_tile, D]
        newline = self.image_newline
        return [pack_image_features(f, size, grid, newline) for f, size, grid in zip(features, image_sizes, grids)]

    def anyres_grids(self, image_sizes, image_grids=None) -> list[tuple[int, int]]:
        """(rows, cols) per image: the processor's image_grids when given (a max_image_tokens budget may have shrunk
        them), else LlavaNext's choice from the image size and config.image_grid_pinpoints."""
        if image_grids is not None:
            return [(int(rows), int(cols)) for rows, cols in image_grids]
        tile = self.config.vision_config.image_size
        return [image_grid(size, self.config.image_grid_pinpoints, tile) for size in image_sizes]

    def get_placeholder_mask(self, input_ids, inputs_embeds: torch.Tensor, image_features: torch.Tensor):
        """[B, T, 1] bool: the positions holding `config.image_token_id`, checked against the features' count.

        As transformers' Llava; without input_ids the placeholders are found by their embedding, which needs the
        placeholder id inside the embedding table.
        """
        image_token_id = self.config.image_token_id
        if image_token_id is None:
            raise ValueError(
                "config.image_token_id is None, so image positions cannot be found; build the model with "
                "MiniLlavaForConditionalGeneration.from_backbones or set config.image_token_id to the processor's "
                "image_token_id."
            )
        if input_ids is not None:
            mask = input_ids == image_token_id  # [B, T]
        elif image_token_id < self.get_input_embeddings().num_embeddings:
            placeholder = self.get_input_embeddings()(torch.tensor(image_token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            raise ValueError(
                f"image_token_id={image_token_id} is outside the embedding table, so with inputs_embeds and "
                "pixel_values the image positions are unknown; pass input_ids instead of inputs_embeds."
            )
        if mask.device.type != "meta" and isinstance(image_features, (list, tuple)):  # AnyRes: counts per image
            check_slots_per_image(mask, [f.shape[0] for f in image_features], image_token_id)
        elif mask.device.type != "meta":  # counts are unknowable on the meta device
            n_slots, (n_img, n_tok) = int(mask.sum()), image_features.shape[:2]
            if n_slots != n_img * n_tok:
                raise ValueError(
                    f"input_ids hold {n_slots} image placeholder tokens (id {image_token_id}), but pixel_values give "
                    f"{n_img} image(s) x {n_tok} tokens = {n_img * n_tok}. The processor and model disagree on "
                    f"tokens per image (model config: {self.config.num_image_tokens}), or truncation cut an image; "
                    "build the processor with MiniLlavaProcessor.from_backbones(..., config=model.config)."
                )
        return mask.unsqueeze(-1).to(inputs_embeds.device)

    def embed_multimodal(
        self, input_ids=None, pixel_values=None, inputs_embeds=None, image_sizes=None, image_grids=None
    ) -> torch.Tensor:
        """Token embeddings with image features written over the placeholder positions: [B, T, D]."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            # The placeholder may lie outside the embedding table (a token added to the tokenizer only): look it up
            # as 0, as Gemma3 does. The row read there is overwritten by the image features below.
            is_image = input_ids == self.config.image_token_id if self.config.image_token_id is not None else None
            inputs_embeds = self.get_input_embeddings()(
                input_ids if is_image is None else input_ids.masked_fill(is_image, 0)
            )
        if pixel_values is not None:
            features = self.get_image_features(pixel_values, image_sizes, image_grids)  # [N_img, T_img, D] or list
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, features)
            if isinstance(features, (list, tuple)):  # AnyRes: [T_i, D] per image, filled in order
                features = torch.cat(features, dim=0)
            features = features.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(mask, features.reshape(-1, inputs_embeds.shape[-1]))
        elif input_ids is not None and self.config.image_token_id is not None and input_ids.device.type != "meta":
            n_slots = int((input_ids == self.config.image_token_id).sum())
            if n_slots and input_ids.shape[1] > 1:
                # A prompt with placeholders but no images; a single decoding step may legitimately sample the id.
                raise ValueError(f"input_ids hold {n_slots} image placeholder tokens but no pixel_values were given.")
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        image_grids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        inputs_embeds = self.embed_multimodal(input_ids, pixel_values, inputs_embeds, image_sizes, image_grids)
        kwargs["return_dict"] = True
        packed = attention_mask is None and position_ids is not None and cache is None
        if packed and kwargs.get("past_key_values") is None:
            # A padding-free packed batch: transformers builds the per-sample block-diagonal mask from position_ids
            # only when there is no cache, and the text config's default use_cache=True would create an empty one,
            # letting the packed samples attend to each other.
            if kwargs.get("use_cache"):
                raise ValueError(
                    "use_cache=True with position_ids and no attention_mask: transformers then builds no per-sample "
                    "mask from position_ids, so the samples of a packed (padding-free) batch would attend to each "
                    "other. Pass use_cache=False for packed batches, or an attention_mask (all ones) to keep a cache "
                    "for one sequence."
                )
            kwargs["use_cache"] = False
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            **kwargs,
        )


class MiniLlavaForConditionalGeneration(MiniLlavaPreTrainedModel, GenerationMixin):
    def __init__(self, config: MiniLlavaConfig):
        super().__init__(config)
        self.model = MiniLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{self._embedding_param_name()}"}
        self.post_init()

    def _embedding_param_name(self) -> str:
        """The LLM's input-embedding weight name (`embed_tokens.weight` for Qwen/Llama, `wte.weight` for GPT-2)."""
        emb = self.model.language_model.get_input_embeddings()
        return next(f"{n}.weight" for n, m in self.model.language_model.named_modules() if m is emb)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader re-creates every loaded parameter as trainable (5.24 `core_model_loading`), which
        would unfreeze the tower of every model loaded from a folder (TRL's CLI, trainers given a path): it is
        frozen again here, as the constructor leaves it."""
        loaded = super().from_pretrained(*args, **kwargs)  # (model, loading_info) with output_loading_info=True
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.model.vision_tower.requires_grad_(False)
        return loaded

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """As transformers', except a request for exactly one more row for an added image placeholder (what
        AutoPeftModel asks when the adapter folder holds the tokenizer): the placeholder never needs a row, since
        it is looked up as 0 and overwritten, so the embedding matrix stays as it is."""
        current = self.get_input_embeddings().num_embeddings
        if pad_to_multiple_of is None and new_num_tokens == current + 1 == (self.config.image_token_id or -1) + 1:
            logger.info(f"Not resizing the embeddings to {new_num_tokens}: the extra id is the image placeholder.")
            return self.get_input_embeddings()
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes=None, image_grids=None):
        return self.model.get_image_features(pixel_values, image_sizes, image_grids)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.LongTensor | None = None,
        image_grids: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """image_sizes / image_grids: AnyRes only (see MiniLlavaModel.get_image_features)."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            image_grids=image_grids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))  # [B, T, V]
        loss = None
        if labels is not None:
            if input_ids is not None and self.config.image_token_id is not None:
                # Never a target, whoever built the labels (TRL's vision collator leaves placeholders to the model).
                labels = labels.masked_fill(input_ids == self.config.image_token_id, -100)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, is_first_iteration=False, **kwargs):
        """GenerationMixin's, which already passes pixel_values on the prefill step only, plus right-padding support.

        Position ids always follow the attention mask (so tokens generated after right padding continue each row's
        own count), and on the prefill step each row's next-token logits come from its last real token, not from
        its padding (`logits_to_keep` as per-row positions).
        """
        if attention_mask is not None and attention_mask.ndim == 2 and attention_mask.shape == input_ids.shape:
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            right_padded = bool((attention_mask[:, -1] == 0).any())
            if is_first_iteration and right_padded and kwargs.get("inputs_embeds") is None:
                kwargs["logits_to_keep"] = (attention_mask.long().sum(-1, keepdim=True) - 1).clamp(min=0)  # [B, 1]
        return super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, is_first_iteration=is_first_iteration, **kwargs
        )

    @classmethod
    def from_backbones(
        cls, vision_name_or_path: str, llm_name_or_path: str, *, dtype=None, attn_implementation=None, **config_kwargs
    ) -> "MiniLlavaForConditionalGeneration":
        """Assemble a model from a pretrained vision tower and a pretrained causal LM (Hub ids or local folders).

        The backbones keep their pretrained weights; only the projector is freshly initialised. `config_kwargs` go
        to `MiniLlavaConfig` (projector_type, vision_feature_layer, image_position, ...). The image placeholder is
        one the LLM's tokenizer reserves (Qwen2.5's `<|image_pad|>`, a Llama-3 reserved token), else the id the
        processor's added `<|image|>` token gets (see `MiniLlavaConfig.from_backbones`).
        """
        config = MiniLlavaConfig.from_backbones(vision_name_or_path, llm_name_or_path, **config_kwargs)
        load = {"dtype": dtype, "attn_implementation": attn_implementation}
        load = {k: v for k, v in load.items() if v is not None}
        with torch.device("meta"):  # skeleton only: the pretrained modules replace it, no weights built twice
            model = cls(config)
        vision_tower = type(model.model.vision_tower).from_pretrained(vision_name_or_path, **load)
        llm = AutoModelForCausalLM.from_pretrained(llm_name_or_path, **load)
        model.model.vision_tower = vision_tower.requires_grad_(False)
        model.model.language_model = getattr(llm, llm.base_model_prefix)
        model.lm_head = llm.get_output_embeddings()
        projector = build_projector(config)
        projector.apply(model._init_weights)
        model.model.multi_modal_projector = projector.to(dtype=llm.dtype)
        if config.anyres:  # the skeleton's newline is on the meta device
            model.model.image_newline = new_image_newline(config.text_config.hidden_size, llm.dtype)
        model.generation_config = llm.generation_config  # the LLM's stop tokens (e.g. Qwen's <|im_end|>)
        model.config.text_config = llm.config
        model.config.vision_config = vision_tower.config
        # Saved configs name their sources portably (no absolute path of this machine).
        model.config.text_config._name_or_path = portable_name(llm_name_or_path)
        model.config.vision_config._name_or_path = portable_name(vision_name_or_path)
        model.config._name_or_path = ""
        model.tie_weights()
        return model


__all__ = ["MiniLlavaPreTrainedModel", "MiniLlavaModel", "MiniLlavaForConditionalGeneration"]
