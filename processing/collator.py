"""MiniLlavaDataCollator: canonical chat rows -> a padded (or padding-free packed) training batch whose labels cover
only the assistant answers (+ their end-of-turn token), located in token space with the processor's own chat template.
"""

import itertools
import logging
from collections import Counter
from typing import NamedTuple

import torch
from jinja2 import TemplateError
from PIL import Image

from .anyres_processing import image_hw, process_on_canvases
from .image_loading import IMAGE_DECODE_ERRORS, load_images

logger = logging.getLogger(__name__)
LOGGED_ROWS_PER_REASON = 10  # dropped rows named in the log per reason; the counters carry the rest

IGNORE_INDEX = -100
TOO_LONG_POLICIES = ("skip", "truncate")
# Why a row was dropped -> the likely cause, used in the error raised when too many rows are dropped.
SKIP_HINTS = {
    "too_long": "max_length is smaller than these rows (each image takes num_image_tokens placeholders, with AnyRes "
    "its planned count); raise max_length, filter long rows in the data script, or keep their start with "
    "too_long='truncate'",
    "image_beyond_max_length": "too_long='truncate' would cut through (or drop) an image's placeholders, which cannot "
    "be matched to its features; raise max_length, or put images before the text (image_position='prefix')",
    "answer_beyond_max_length": "too_long='truncate' would keep no answer token (the prompt alone fills max_length); "
    "raise max_length or shorten the prompts",
    "tokenization_mismatch": "the prompt rendered with add_generation_prompt=True does not tokenize as a prefix of "
    "the finished conversation (chat template renders the generation prompt differently, or BPE merges across the "
    "prompt/answer boundary); check processor.chat_template",
    "no_end_of_turn": "no stop_token_ids closes the assistant turn; pass stop_token_ids=model.generation_config."
    "eos_token_id (a base model's tokenizer eos is often not the chat end-of-turn token)",
    "image_budget": "AnyRes: the row's images take more than max_image_tokens even on the smallest grids; raise "
    "max_image_tokens (config and processor) or put fewer images in a row",
    "image_count_mismatch": "row['images'] does not match the {'type': 'image'} parts; make sure the images column "
    "reaches the collator (SFTConfig(remove_unused_columns=False))",
    "render_error": "the chat template failed on these messages (roles out of order, unsupported content part?)",
    "unreadable_image": "an image that does not decode (corrupt or truncated file); re-run the data script",
    "bad_messages": "`messages` is missing, empty or not a list of {role, content} messages",
    "empty_answer": "an assistant turn with no text: its only label would be the end-of-turn token",
    "all_masked": "rows with no assistant turn, so there is nothing to learn from them",
}


def _text_of(content) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(p.get("text") or "" for p in parts if isinstance(p, dict) and p.get("type") == "text")


class Sample(NamedTuple):
    """One encoded row: ids with each image expanded to its placeholders, labels, its images, whether it was cut, and
    (AnyRes) each image's planned canvas [h, w]."""

    ids: list[int]
    labels: list[int]
    images: list[Image.Image]
    truncated: bool = False
    canvases: list[list[int]] | None = None


class _SkipRow(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class MiniLlavaDataCollator:
    r"""
    Rows (the canonical schema: `messages` in HF multimodal chat format + `images`) -> `input_ids` (each image as
    `num_image_tokens` placeholder ids), `attention_mask`, `labels` and, when any row has images, `pixel_values`.
    AnyRes processors (LLaVA-NeXT image splitting): each row's images are planned by `processor.plan_canvases` with
    the row as one sample (so `max_image_tokens` budgets each row, as the processor does), each image takes its
    planned count of placeholders, and the batch holds `pixel_values` [N_img, max_tiles, 3, t, t], `image_sizes` and
    `image_grids` [N_img, 2] for all its images in order, exactly as the processor's `__call__` returns them.
    Use as SFTTrainer's `data_collator` with `remove_unused_columns=False` and
    `dataset_kwargs={"skip_prepare_dataset": True}`.

    Labels: each assistant turn's tokens up to and including the first stop token (the end-of-turn), found by laying
    out the prompt before that turn (`add_generation_prompt=True`) and checking that its ids are a prefix of the full
    conversation's ids. Everything else (system, user turns, template tokens, image placeholders, padding) is -100.

    Rows longer than `max_length`: `too_long="skip"` drops them (reason `too_long`). `too_long="truncate"` keeps
    their first `max_length` tokens and counts them in `stats["truncated"]`; the labels are exactly the assistant
    tokens among those (a cut answer loses its end-of-turn). A cut that would split or drop an image's placeholders
    (`image_beyond_max_length`) or keep no answer token (`answer_beyond_max_length`) drops the row instead.

    Padding-free (`padding_free=True`), as TRL's `DataCollatorForLanguageModeling(padding_free=True)`: the kept rows
    are laid end to end in ONE row: `input_ids`, `labels`, `position_ids` [1, sum(L_i)] with positions restarting at 0
    per row and each row's first label -100 (no target across rows), no `attention_mask`, plus the varlen kernels'
    `cu_seq_lens_q/k`, `max_length_q/k` and `seq_idx`; `pixel_values` hold every image in row order. Attention stays
    inside each row: flash attention reads `cu_seq_lens_*`; sdpa, eager and flex build a block-diagonal mask from
    `position_ids` (transformers' `find_packed_sequence_indices`) only when the forward has NO cache, which the model
    ensures (without an attention_mask, position_ids turn its cache off; TRL passes `use_cache=False` anyway).

    Dropped rows (never silently): a row that cannot train is skipped for one of the reasons in SKIP_HINTS (too
    long, unreadable image, image-count mismatch, tokenization mismatch, ...), counted in `stats["skipped"][reason]`
    and, for the first LOGGED_ROWS_PER_REASON rows of each reason, named in the log. Rows with no assistant turn are
    counted in `stats["all_masked"]` and dropped too (a batch of only such rows would give a NaN loss). A batch
    returns the rows that are left; if none is left, or once `min_rows_before_check` rows were seen and more than
    `max_skip_fraction` of them were dropped, a RuntimeError names the counts and the likely cause.
    Counters live in the process that runs the collator (each DataLoader worker has its own copy).

    Args:
        processor (`MiniLlavaProcessor`): its chat template, tokenizer and image processor define the layout.
        max_length (`int`, *optional*): longest sequence (text + image placeholders) kept; None keeps all.
        max_skip_fraction (`float`): largest tolerated fraction of dropped rows (skipped + all-masked).
        padding_side (`str`): "right" for training (explicit here, never read from the tokenizer).
        stop_token_ids (`int | list[int]`, *optional*): end-of-turn ids; default the tokenizer's eos. Pass
            `model.generation_config.eos_token_id` to use the model's stop ids.
        min_rows_before_check (`int`): rows to see before `max_skip_fraction` is enforced.
        too_long (`str`): "skip" (drop rows longer than `max_length`) or "truncate" (keep their first `max_length`).
        padding_free (`bool`): return the batch packed into one row without padding (see above).
    """

    def __init__(
        self,
        processor,
        max_length: int | None = None,
        max_skip_fraction: float = 0.05,
        padding_side: str = "right",
        stop_token_ids: int | list[int] | None = None,
        min_rows_before_check: int = 20,
        too_long: str = "skip",
        padding_free: bool = False,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'right' (training) or 'left', got {padding_side!r}.")
        if max_length is not None and max_length <= 0:
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}.")
        if too_long not in TOO_LONG_POLICIES:
            raise ValueError(f"too_long must be one of {TOO_LONG_POLICIES}, got {too_long!r}.")
        if stop_token_ids is None:
            stop_token_ids = processor.tokenizer.eos_token_id
        stop_token_ids = [stop_token_ids] if isinstance(stop_token_ids, int) else list(stop_token_ids or [])
        if not stop_token_ids or not all(isinstance(i, int) for i in stop_token_ids):
            raise ValueError(
                f"stop_token_ids must be a non-empty list of ints, got {stop_token_ids!r}; the tokenizer has no eos, "
                "so pass stop_token_ids=model.generation_config.eos_token_id."
            )
        self.processor = processor
        self.max_length = max_length
        self.max_skip_fraction = max_skip_fraction
        self.padding_side = padding_side
        self.stop_token_ids = frozenset(stop_token_ids)
        self.min_rows_before_check = min_rows_before_check
        self.too_long = too_long
        self.padding_free = padding_free
        self.stats = {"seen": 0, "kept": 0, "truncated": 0, "all_masked": 0, "skipped": Counter()}
        self._logged_reasons = Counter()

    @property
    def dropped(self) -> int:
        return sum(self.stats["skipped"].values()) + self.stats["all_masked"]

    def check_row(self, row: dict) -> tuple[str, str] | None:
        """(reason, detail) when this row would be dropped, else None: the pre-training data check asks this, so a
        run drops bad rows before any model is built, with the collator's own rules."""
        return self._encode(row)[1]

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        samples = []  # one Sample per kept row
        for row in rows:
            self.stats["seen"] += 1
            sample, problem = self._encode(row)
            if problem:
                self._drop(row, *problem)
                continue
            self.stats["kept"] += 1
            self.stats["truncated"] += sample.truncated
            samples.append(sample)
        self._check_drop_fraction()
        if not samples:
            raise RuntimeError(
                f"All {len(rows)} rows of this batch were dropped ({self._describe_drops()}); a collator cannot "
                "return an empty batch. Fix the data or the settings named above."
            )
        return self.pack_batch(samples) if self.padding_free else self.pad_batch(samples)

    def _encode(self, row: dict):
        """(sample, None) for a row that trains, or (None, (reason, detail)) for one that is dropped."""
        try:
            sample = self.encode_row(row)
        except _SkipRow as skip:
            return None, (skip.reason, skip.detail)
        if all(label == IGNORE_INDEX for label in sample.labels):
            return None, ("all_masked", "no assistant turn, so every label is -100")
        return sample, None

    def encode_row(self, row: dict) -> Sample:
        """One row -> Sample(ids, labels, images, truncated); raises _SkipRow to drop it."""
        if "messages" not in row:  # a whole column missing is a set-up error, not one bad row
            raise ValueError(
                f"Row has no 'messages' (keys: {sorted(row)}); pass raw dataset rows (SFTConfig("
                "remove_unused_columns=False, dataset_kwargs={'skip_prepare_dataset': True}))."
            )
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise _SkipRow("bad_messages", f"messages is {messages!r:.60}")
        for turn, message in enumerate(messages):
            if message.get("role") == "assistant" and not _text_of(message.get("content")).strip():
                raise _SkipRow("empty_answer", f"message {turn} (assistant) has no text")
        try:
            images = load_images(row.get("images"))
        except IMAGE_DECODE_ERRORS as error:
            raise _SkipRow("unreadable_image", f"{type(error).__name__}: {error}") from None
        text = self._render(messages, add_generation_prompt=False)
        n_markers = text.count(self.processor.image_token)
        if n_markers != len(images):
            raise _SkipRow("image_count_mismatch", f"{n_markers} image part(s) but {len(images)} image(s)")
        canvases, counts = self.plan_images(images)
        ids = self._tokenize(text, counts)
        too_long = self.max_length is not None and len(ids) > self.max_length
        if too_long and self.too_long == "skip":  # before the spans: no prompt is tokenized for a dropped row
            raise _SkipRow("too_long", f"{len(ids)} tokens > max_length={self.max_length}")
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in self.find_assistant_spans(messages, ids, counts):
            # An image inside an answer is input, never a target.
            labels[start:end] = [IGNORE_INDEX if i == self.processor.image_token_id else i for i in ids[start:end]]
        sample = Sample(ids, labels, images, canvases=canvases)
        return self.truncate(sample) if too_long else sample

    def plan_images(self, images) -> tuple[list[list[int]] | None, list[int] | None]:
        """AnyRes: (canvas [h, w], placeholder count) of each image, planned by the processor with the row as ONE
        sample, so `max_image_tokens` budgets the row as processor(images=..., text=[row]) does. (None, None) for a
        single-tile processor (every image takes num_image_tokens)."""
        if not self.processor.anyres:
            return None, None
        if not images:
            return [], []
        sizes = [image_hw(image) for image in images]
        try:
            plan = self.processor.plan_canvases(sizes, [len(sizes)])
        except ValueError as error:  # over max_image_tokens even on the smallest grids
            raise _SkipRow("image_budget", str(error)) from None
        return [canvas for canvas, _ in plan], [tokens for _, tokens in plan]

    def truncate(self, sample: Sample) -> Sample:
        """The first max_length tokens of a row whose labels were found on the whole conversation (so a cut answer
        keeps exactly its tokens before the cut); raises _SkipRow when the cut would leave an image incomplete or
        missing (its features would have no, or too few, placeholders) or no answer token."""
        n, ids, labels = self.max_length, sample.ids, sample.labels
        image_id = self.processor.image_token_id
        if image_id in ids[n:]:  # an image cut through, or one that would be dropped whole
            last = len(ids) - 1 - ids[::-1].index(image_id)
            raise _SkipRow(
                "image_beyond_max_length",
                f"image placeholders reach position {last} but max_length={n} (row of {len(ids)} tokens)",
            )
        if all(label == IGNORE_INDEX for label in labels[:n]) and any(label != IGNORE_INDEX for label in labels):
            first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
            raise _SkipRow("answer_beyond_max_length", f"the first answer token is at {first} >= max_length={n}")
        return sample._replace(ids=ids[:n], labels=labels[:n], truncated=True)

    def find_assistant_spans(self, messages, ids, counts=None) -> list[tuple[int, int]]:
        """[start, end) of each assistant answer + end-of-turn token in `ids`, found via the prompts' token lengths.

        Prompts are compared on their text tokens only: in the "prefix" layout the placeholders of every image, also
        those of later turns, open the full sequence but not a prompt rendered from the earlier messages alone.
        `counts`: AnyRes placeholders per image of the row (a prompt holds the first images of the row).
        """
        image_id = self.processor.image_token_id
        text_positions = [i for i, token in enumerate(ids) if token != image_id]
        text_ids = [ids[i] for i in text_positions]
        spans, previous_end = [], 0
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            rendered = self._render(messages[:turn], add_generation_prompt=True)
            prompt = [t for t in self._tokenize(rendered, counts) if t != image_id]
            if text_ids[: len(prompt)] != prompt:
                diff = next((i for i, (a, b) in enumerate(zip(text_ids, prompt)) if a != b), len(text_ids))
                raise _SkipRow(
                    "tokenization_mismatch",
                    f"prompt before message {turn} ({len(prompt)} text tokens) differs from the conversation at text "
                    f"token {diff}",
                )
            start = text_positions[len(prompt)] if len(prompt) < len(text_positions) else len(ids)
            if start < previous_end:
                raise _SkipRow("no_end_of_turn", f"the assistant turn before message {turn} has no stop token")
            end = next((i for i in range(start, len(ids)) if ids[i] in self.stop_token_ids), None)
            if end is None:
                raise _SkipRow("no_end_of_turn", f"no stop id {sorted(self.stop_token_ids)} after message {turn}")
            spans.append((start, end + 1))
            previous_end = end + 1
        return spans

    def pad_batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Pad every key in step on `padding_side` (the tokenizer's own pad); labels pad with -100."""
        batch = dict(
            self.processor.tokenizer.pad(
                {"input_ids": [s.ids for s in samples]}, padding_side=self.padding_side, return_tensors="pt"
            )
        )
        width = batch["input_ids"].shape[1]
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        for row, sample in enumerate(samples):
            n = len(sample.labels)
            span = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            labels[row, span] = torch.tensor(sample.labels, dtype=torch.long)
        batch["labels"] = labels
        return self._add_pixel_values(batch, samples)

    def pack_batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Padding-free: the samples end to end in one row [1, sum(L_i)], keys as TRL's padding_free collator."""
        lengths = [len(s.ids) for s in samples]
        input_ids = torch.tensor([[t for s in samples for t in s.ids]], dtype=torch.long)  # [1, N]
        labels = torch.tensor([[t for s in samples for t in s.labels]], dtype=torch.long)  # [1, N]
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]  # [1, N], 0 at each sample's start
        labels[position_ids == 0] = IGNORE_INDEX  # the previous sample's last token must not predict this one
        # Sample boundaries for the varlen kernels, computed here so flash attention needs no device->host sync.
        cu_seq_lens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)  # [n + 1]
        seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), cu_seq_lens.diff())  # [N]
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max(lengths),
            "max_length_k": max(lengths),
            "seq_idx": seq_idx[None],  # sample of each token, for linear-attention layers' short convolutions
        }
        return self._add_pixel_values(batch, samples)

    def _add_pixel_values(self, batch: dict, samples: list[Sample]) -> dict:
        # One image list in sample order: the model fills the placeholders in the order they appear.
        images = [image for s in samples for image in s.images]
        if not images:
            return batch
        if not self.processor.anyres:
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
            return batch
        # The processor's own AnyRes step on each image's planned canvas: pixel_values [N_img, max_tiles, 3, t, t]
        # (tile lists zero-padded to the batch's longest), image_sizes and image_grids [N_img, 2].
        canvases = [canvas for s in samples for canvas in s.canvases]
        data = process_on_canvases(self.processor.image_processor, images, canvases)
        batch.update({key: torch.from_numpy(value) for key, value in data.items()})
        return batch

    def _tokenize(self, text: str, counts: list[int] | None = None) -> list[int]:
        """Ids of `text` with its image tokens expanded by the processor: the k-th to counts[k] placeholders (AnyRes),
        else to num_image_tokens each. The chat template holds the special tokens, so none are added."""
        try:
            expanded = self.processor.expand_image_tokens(text, counts=counts)
        except ValueError as error:
            raise _SkipRow("image_count_mismatch", str(error)) from None
        return self.processor.tokenizer(expanded, add_special_tokens=False)["input_ids"]

    def _render(self, messages, add_generation_prompt: bool) -> str:
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        except (TemplateError, ValueError) as error:
            raise _SkipRow("render_error", f"{type(error).__name__}: {error}") from error

    def _drop(self, row: dict, reason: str, detail: str) -> None:
        if reason == "all_masked":
            self.stats["all_masked"] += 1
        else:
            self.stats["skipped"][reason] += 1
        self._logged_reasons[reason] += 1
        n = self._logged_reasons[reason]
        if n <= LOGGED_ROWS_PER_REASON:
            last = n == LOGGED_ROWS_PER_REASON
            more = " Further rows dropped for this reason are only counted in collator.stats." if last else ""
            logger.warning("Dropping row id=%r: %s (%s).%s", row.get("id"), reason, detail, more)

    def _describe_drops(self) -> str:
        reasons = {**self.stats["skipped"], "all_masked": self.stats["all_masked"]}
        causes = "; ".join(f"{reason}: {SKIP_HINTS[reason]}" for reason, n in reasons.items() if n)
        return f"skipped {dict(self.stats['skipped'])}, all_masked {self.stats['all_masked']}. Likely cause: {causes}"

    def _check_drop_fraction(self) -> None:
        seen = self.stats["seen"]
        if seen >= self.min_rows_before_check and self.dropped / seen > self.max_skip_fraction:
            raise RuntimeError(
                f"MiniLlavaDataCollator dropped {self.dropped} of {seen} rows ({self.dropped / seen:.1%} > "
                f"max_skip_fraction={self.max_skip_fraction:.1%}): {self._describe_drops()}."
            )


__all__ = ["MiniLlavaDataCollator"]
