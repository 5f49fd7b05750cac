"""MiniLlava: frozen vision tower -> projector -> any causal LM, images entering as virtual tokens via inputs_embeds.

Layout follows transformers' Llava (so TRL's fused LM-head loss, PEFT patterns and readers work unchanged):
`MiniLlavaForConditionalGeneration.model` (MiniLlavaModel: vision_tower, multi_modal_projector, language_model)
+ `lm_head`. The processor lays out the merged sequence and marks image slots with `image_mask`; no vocabulary token
is added. Labels arrive with the merged length and -100 on every image slot.
"""

import contextlib

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from .configuration_minillava import MiniLlavaConfig
from .projectors import PerceiverResampler, build_projector


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


class MiniLlavaModel(MiniLlavaPreTrainedModel):
    """Vision tower + projector + the LLM's base model; returns hidden states over the whole merged sequence."""

    def __init__(self, config: MiniLlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_projector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        # LLaVA convention: the tower is frozen unless a training recipe unfreezes it.
        self.vision_tower.requires_grad_(False)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N_img, 3, H, W] -> [N_img, T_img, D_text]."""
        frozen = not any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.no_grad() if frozen else contextlib.nullcontext():  # no activations kept for a frozen tower
            pixel_values = pixel_values.to(self.vision_tower.dtype)
            out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
            features = out.hidden_states[self.config.vision_feature_layer]  # [N_img, N_vis(+CLS), D_vision]
            if self.config.vision_feature_select_strategy == "default":
                features = features[:, 1:]  # drop CLS
        return self.multi_modal_projector(features)

    def merge_image_features(
        self, inputs_embeds: torch.Tensor, image_features: torch.Tensor, image_mask: torch.Tensor
    ) -> torch.Tensor:
        """Write image features [N_img, T_img, D] into the slots `image_mask` [B, T] marks, in reading order.

        Each row may hold its own number of slots (0, 1 or several images); only the totals must agree.
        """
        if image_mask is None:
            raise ValueError("pixel_values were given without image_mask; build inputs with MiniLlavaProcessor.")
        if image_mask.shape != inputs_embeds.shape[:2]:
            raise ValueError(
                f"image_mask has shape {tuple(image_mask.shape)}, expected {tuple(inputs_embeds.shape[:2])}."
            )
        image_mask = image_mask.bool()
        if image_mask.device.type != "meta":  # counts are unknowable on the meta device
            n_slots, (n_img, n_tok) = int(image_mask.sum()), image_features.shape[:2]
            if n_slots != n_img * n_tok:
                raise ValueError(
                    f"image_mask marks {n_slots} image slots, but pixel_values give {n_img} image(s) x {n_tok} tokens "
                    f"= {n_img * n_tok}. The processor and model disagree on tokens per image (model config: "
                    f"{self.config.num_image_tokens}); rebuild the processor with "
                    "MiniLlavaProcessor.from_backbones(..., config=model.config)."
                )
        features = image_features.to(inputs_embeds.device, inputs_embeds.dtype).reshape(-1, inputs_embeds.shape[-1])
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1).to(inputs_embeds.device), features)

    def embed_multimodal(self, input_ids=None, pixel_values=None, image_mask=None, inputs_embeds=None) -> torch.Tensor:
        """Token embeddings with image features written into their slots: [B, T, D]."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            inputs_embeds = self.merge_image_features(inputs_embeds, self.get_image_features(pixel_values), image_mask)
        elif image_mask is not None and image_mask.device.type != "meta" and bool(image_mask.any()):
            raise ValueError(f"image_mask marks {int(image_mask.sum())} image slots but no pixel_values were given.")
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        inputs_embeds = self.embed_multimodal(input_ids, pixel_values, image_mask, inputs_embeds)  # [B, T, D]
        kwargs["return_dict"] = True
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

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            image_mask=image_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))  # [B, T, V]
        loss = None
        if labels is not None:  # labels already have the merged length, -100 on image slots and padding
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

    @torch.no_grad()
    def generate(self, input_ids=None, pixel_values=None, attention_mask=None, image_mask=None, **kwargs):
        """Batched generation with the KV cache; returns only the new tokens.

        The images are merged once, then every row is LEFT-aligned (padding first) so that the last position of each
        row is a real token: GenerationMixin's naive path (merging inside forward) is wrong for padded rows.
        """
        if kwargs.get("inputs_embeds") is not None:
            return super().generate(attention_mask=attention_mask, **kwargs)
        embeds = self.model.embed_multimodal(input_ids, pixel_values, image_mask)  # [B, T, D]
        if attention_mask is None:
            attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        order = torch.argsort(attention_mask.long(), dim=1, stable=True)  # pads (0) first, tokens keep their order
        embeds = torch.gather(embeds, 1, order.unsqueeze(-1).expand_as(embeds))
        attention_mask = torch.gather(attention_mask, 1, order)
        return super().generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    @classmethod
    def from_backbones(
        cls, vision_name_or_path: str, llm_name_or_path: str, *, dtype=None, attn_implementation=None, **config_kwargs
    ) -> "MiniLlavaForConditionalGeneration":
        """Assemble a model from a pretrained vision tower and a pretrained causal LM (Hub ids or local folders).

        The backbones keep their pretrained weights; only the projector is freshly initialised. `config_kwargs` go
        to `MiniLlavaConfig` (projector_type, vision_feature_layer, image_position, ...).
        """
        vision_config = AutoConfig.from_pretrained(vision_name_or_path)
        vision_config = getattr(vision_config, "vision_config", vision_config)  # a full SigLIP/CLIP checkpoint
        text_config = AutoConfig.from_pretrained(llm_name_or_path)
        config = MiniLlavaConfig(vision_config=vision_config, text_config=text_config, **config_kwargs)
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
        model.generation_config = llm.generation_config  # the LLM's stop tokens (e.g. Qwen's <|im_end|>)
        model.config.text_config = llm.config
        model.config.vision_config = vision_tower.config
        model.config._name_or_path = ""
        model.tie_weights()
        return model


__all__ = ["MiniLlavaPreTrainedModel", "MiniLlavaModel", "MiniLlavaForConditionalGeneration"]
