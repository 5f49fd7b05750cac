"""MiniLlavaConfig: a vision-tower config + a causal-LM config + projector settings; config.json alone rebuilds it."""

import math
import re

from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .anyres import count_anyres_tokens, derive_pinpoints, image_grid
from .projectors import PROJECTORS

# Vision towers we know how to read features from, and whether their sequence starts with a CLS token.
VISION_TOWERS = {"siglip_vision_model": {"has_cls": False}, "clip_vision_model": {"has_cls": True}}
# "default" drops the CLS token (LLaVA's convention for CLIP), "full" keeps every token.
SELECT_STRATEGIES = ("default", "full")
# "prefix": [image] + [whole chat]; "user_turn": the image sits where the user's message puts it.
IMAGE_POSITIONS = ("prefix", "user_turn")
# Placeholder tokens an LLM tokenizer may already reserve for images, best first (Qwen2/2.5: <|image_pad|>; llava-hf
# tokenizers: <image>; Llama 3.2: <|image|>); then any Llama-3 style reserved special token. Failing all of these, the
# processor adds DEFAULT_IMAGE_TOKEN to the tokenizer (never to the embedding matrix: the model maps it to id 0 before
# the embedding lookup, and image features overwrite those positions anyway).
IMAGE_TOKEN_CANDIDATES = ("<|image_pad|>", "<image>", "<|image|>")
RESERVED_TOKEN_PATTERN = re.compile(r"^<\|reserved_special_token_(\d+)\|>$")
DEFAULT_IMAGE_TOKEN = "<|image|>"  # control-token shaped, so a question that says "<image>" stays plain text
# Remote-code entry points written into config.json; the code files are copied flat next to the weights. Users of
# remote-code VLMs write AutoModel / AutoModelForCausalLM too, so those give the generating model as well.
_MODEL_CLASS = "modeling_minillava.MiniLlavaForConditionalGeneration"
AUTO_MAP = {
    "AutoConfig": "configuration_minillava.MiniLlavaConfig",
    "AutoModel": _MODEL_CLASS,
    "AutoModelForCausalLM": _MODEL_CLASS,
    "AutoModelForImageTextToText": _MODEL_CLASS,
}


def choose_image_token(tokenizer) -> tuple[str, int]:
    """(token, id) for image placeholders: a special token the tokenizer already has, else DEFAULT_IMAGE_TOKEN with
    the id it gets when the processor adds it (`len(tokenizer)`, the next free id)."""
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in tokenizer.added_tokens_decoder.values() if getattr(t, "special", False)
    }
    for token in IMAGE_TOKEN_CANDIDATES:
        if token in specials:
            return token, tokenizer.convert_tokens_to_ids(token)
    reserved = sorted((int(m.group(1)), t) for t in specials if (m := RESERVED_TOKEN_PATTERN.match(t)))
    if reserved:
        return reserved[0][1], tokenizer.convert_tokens_to_ids(reserved[0][1])
    return DEFAULT_IMAGE_TOKEN, len(tokenizer)


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name}={value!r}; allowed values: {sorted(allowed)}.")


class MiniLlavaConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MiniLlavaForConditionalGeneration`].

    Args:
        vision_config (`dict` or `PreTrainedConfig`): a SigLIP or CLIP vision-tower config.
        text_config (`dict` or `PreTrainedConfig`): any causal-LM config (`AutoModelForCausalLM`).
        projector_type (`str`): a key of `PROJECTORS` ("mlp2x_gelu", "perceiver", "pixel_shuffle_mlp").
        projector_hidden_act (`str`): activation inside the projector.
        perceiver_num_latents / perceiver_depth (`int`): Perceiver resampler size.
        pixel_shuffle_factor (`int`): space-to-depth factor of `pixel_shuffle_mlp`.
        vision_feature_layer (`int`): which hidden state of the tower to project (-1: last, -2: LLaVA-1.5's).
        vision_feature_select_strategy (`str` or `None`): "default" drops CLS, "full" keeps all; `None` picks
            "default" for towers with a CLS token (CLIP) and "full" otherwise (SigLIP).
        image_position (`str`): "prefix" or "user_turn"; read by the processor, which lays out the sequence.
        image_token_id (`int`): the placeholder id marking image positions in `input_ids`; it need not be inside the
            embedding table (ids >= the LLM's vocab_size are looked up as 0, then overwritten by image features).
        image_seq_length (`int`, read-only): `num_image_tokens`, under the name Llava and serving engines read.
        image_grid_pinpoints (`list[[h, w]]` or `None`): LLaVA-NeXT AnyRes canvases, multiples of the tower's
            image_size (the tile). `None` (default): one square tile per image, as LLaVA-1.5.
        max_tiles (`int` or `None`): derive the pinpoints instead: every rows x cols grid with rows*cols <= max_tiles.
        max_image_tokens (`int` or `None`): AnyRes only, image tokens one sample may hold; the processor shrinks grids
            until a sample fits. `None`: no budget.
    """

    model_type = "minillava"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "mlp2x_gelu"
    projector_hidden_act: str = "gelu"
    perceiver_num_latents: int = 64
    perceiver_depth: int = 2
    pixel_shuffle_factor: int = 2
    vision_feature_layer: int = -1
    vision_feature_select_strategy: str | None = None
    image_position: str = "user_turn"
    image_token_id: int | None = None
    tie_word_embeddings: bool = False
    image_grid_pinpoints: list | None = None
    max_tiles: int | None = None
    max_image_tokens: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_choice("projector_type", self.projector_type, PROJECTORS)
        _check_choice("vision_config.model_type", self.vision_config.model_type, VISION_TOWERS)
        _check_choice("image_position", self.image_position, IMAGE_POSITIONS)
        has_cls = VISION_TOWERS[self.vision_config.model_type]["has_cls"]
        if self.vision_feature_select_strategy is None:
            self.vision_feature_select_strategy = "default" if has_cls else "full"
        _check_choice("vision_feature_select_strategy", self.vision_feature_select_strategy, SELECT_STRATEGIES)
        if self.vision_feature_select_strategy == "default" and not has_cls:
            raise ValueError(
                f"vision_feature_select_strategy='default' drops a CLS token, but {self.vision_config.model_type} "
                "has none; use 'full'."
            )
        n_layers = self.vision_config.num_hidden_layers
        if not -n_layers - 1 <= self.vision_feature_layer <= n_layers:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer} is outside the tower's {n_layers} layers "
                f"(valid: {-n_layers - 1}..{n_layers})."
            )
        # Tie lm_head to the embeddings exactly when the LLM does (Qwen2.5-1.5B ties, 7B does not); transformers
        # reads the top-level flag, so it must mirror the text config.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        if self.image_token_id is not None and self.image_token_id < 0:
            raise ValueError(f"image_token_id must be a non-negative token id, got {self.image_token_id}.")
        _ = self.num_image_tokens  # validates the projector against the tower's grid now, not at the first forward
        self._check_anyres()

    def _check_anyres(self) -> None:
        tile = self.vision_config.image_size
        if self.max_tiles is not None:
            if not isinstance(self.max_tiles, int) or self.max_tiles < 1:
                raise ValueError(f"max_tiles must be a positive int, got {self.max_tiles!r}.")
            derived = derive_pinpoints(self.max_tiles, tile)
            if self.image_grid_pinpoints is not None and [list(p) for p in self.image_grid_pinpoints] != derived:
                raise ValueError(
                    f"image_grid_pinpoints={self.image_grid_pinpoints} disagrees with max_tiles={self.max_tiles} "
                    f"(which gives {derived}); set only one of them."
                )
            self.image_grid_pinpoints = derived
        if self.image_grid_pinpoints is not None:
            self.image_grid_pinpoints = check_pinpoints(self.image_grid_pinpoints, tile)
            projector = PROJECTORS[self.projector_type]
            if not projector.keeps_grid:
                raise ValueError(
                    f"AnyRes (image_grid_pinpoints) stitches each tile's token grid into one map, but "
                    f"projector_type={self.projector_type!r} outputs no spatial grid; use 'mlp2x_gelu' or "
                    "'pixel_shuffle_mlp'."
                )
            if self.num_vision_tokens != (tile // self.vision_config.patch_size) ** 2:
                raise ValueError(
                    f"AnyRes needs a square patch grid per tile, but vision_feature_select_strategy="
                    f"{self.vision_feature_select_strategy!r} keeps the CLS token of {self.vision_config.model_type}; "
                    "use 'default'."
                )
        if self.max_image_tokens is not None:
            if self.image_grid_pinpoints is None:
                raise ValueError(
                    f"max_image_tokens={self.max_image_tokens} shrinks AnyRes grids, but AnyRes is off; set "
                    "image_grid_pinpoints or max_tiles, or leave max_image_tokens=None."
                )
            if not isinstance(self.max_image_tokens, int) or self.max_image_tokens <= self.num_image_tokens:
                raise ValueError(
                    f"max_image_tokens={self.max_image_tokens!r} must be an int above one tile's "
                    f"{self.num_image_tokens} tokens (an AnyRes image is a base tile plus its grid)."
                )

    @classmethod
    def from_backbones(cls, vision_name_or_path: str, llm_name_or_path: str, **kwargs) -> "MiniLlavaConfig":
        """The config of a model assembled from these backbones (Hub ids or local folders), without any weights:
        the tower's and the LLM's configs, the placeholder id from the LLM's tokenizer (`choose_image_token`)."""
        vision_config = AutoConfig.from_pretrained(vision_name_or_path)
        vision_config = getattr(vision_config, "vision_config", vision_config)  # a full SigLIP/CLIP checkpoint
        text_config = AutoConfig.from_pretrained(llm_name_or_path)
        if kwargs.get("image_token_id") is None:
            kwargs["image_token_id"] = choose_image_token(AutoTokenizer.from_pretrained(llm_name_or_path))[1]
        return cls(vision_config=vision_config, text_config=text_config, **kwargs)

    @property
    def num_vision_tokens(self) -> int:
        """Tokens the vision tower hands to the projector for one image."""
        vc = self.vision_config
        n = (vc.image_size // vc.patch_size) ** 2
        if VISION_TOWERS[vc.model_type]["has_cls"] and self.vision_feature_select_strategy == "full":
            n += 1
        return n

    @property
    def num_image_tokens(self) -> int:
        """Virtual tokens (sequence slots) one image occupies in the LLM's input."""
        return PROJECTORS[self.projector_type].num_output_tokens(self, self.num_vision_tokens)

    @property
    def image_seq_length(self) -> int:
        return self.num_image_tokens

    @property
    def anyres(self) -> bool:
        return self.image_grid_pinpoints is not None

    @property
    def tile_feature_side(self) -> int:
        """Side of one tile's token grid after the projector (27 for SigLIP-so400m + mlp2x_gelu, 9 with a 3x3
        pixel shuffle); AnyRes stitches tiles on this grid."""
        return math.isqrt(self.num_image_tokens)

    def image_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles an image of this size gets (no budget); (1, 1) meaning the single tile when AnyRes
        is off."""
        if not self.anyres:
            return 1, 1
        return image_grid((height, width), self.image_grid_pinpoints, self.vision_config.image_size)

    def count_image_tokens(self, height: int, width: int) -> int:
        """Placeholder tokens an image of (height, width) takes in the LLM input (no max_image_tokens budget)."""
        if not self.anyres:
            return self.num_image_tokens
        return count_anyres_tokens((height, width), self.image_grid(height, width), self.tile_feature_side)


def check_pinpoints(pinpoints, tile: int) -> list[list[int]]:
    """[[h, w], ...] as ints, each a positive multiple of the tile (the tower's image_size), else a clear error."""
    if not isinstance(pinpoints, (list, tuple)) or not pinpoints:
        raise ValueError(f"image_grid_pinpoints must be a non-empty list of [height, width], got {pinpoints!r}.")
    out = []
    for point in pinpoints:
        if (
            not isinstance(point, (list, tuple))
            or len(point) != 2
            or not all(isinstance(v, int) and v > 0 and v % tile == 0 for v in point)
        ):
            raise ValueError(
                f"image_grid_pinpoints entry {point!r} must be [height, width], positive multiples of the vision "
                f"tower's image_size {tile} (e.g. [{tile}, {2 * tile}])."
            )
        out.append([int(point[0]), int(point[1])])
    return out


__all__ = ["MiniLlavaConfig", "check_pinpoints", "choose_image_token"]
