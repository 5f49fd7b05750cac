"""Padding-free packing vs padding: useful (non-pad) training tokens/s of forward + backward + AdamW steps on rows of
mixed length, our model packed (MiniLlavaDataCollator(padding_free=True)) vs padded vs transformers' padded twin with
the same weights (LlavaNext on AnyRes mixed grids, the default; Llava on --grids single), from wall and CPU time.

    python -m bench.bench_packing [--quick] [--json OUT] [--backbones DIR] [--attn sdpa|eager] [--llm tiny|wide]
                                  [--grids mixed|single]
"""

import collections
import copy
import random
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from bench.harness import base_parser, finish, interleave, print_machine, print_table, ratios, start, summarize
from bench.tiny_setup import backbone_paths, stop_ids
from bench.workloads import count, trainable_parameters
from modeling_minillava import MiniLlavaForConditionalGeneration
from processing import MiniLlavaProcessor
from processing.collator import MiniLlavaDataCollator
from scripts.export_llava import build_llava_config

WORDS = "invoice total vendor amount due date paid receipt tax item quantity unit price order number".split()
# Answer length in words: mostly short, some medium, a few long (the shape of a VQA + captioning mix).
ANSWER_WORDS = [((1, 8), 0.7), ((20, 60), 0.2), ((100, 250), 0.1)]
IMAGE_COUNTS = [(0, 0.25), (1, 0.5), (2, 0.25)]  # single: 0, 64 or 128 image tokens per row on the tiny model
# mixed: AnyRes with every grid up to MAX_TILES tiles. Kinds of image as ((height range), (width range)); on the tiny
# tower (128-px tiles, 64 tokens each) a row's image tokens then run from 0 (text only) to ~600 (two pages).
MAX_TILES = 4
IMAGE_KINDS = [
    (("page", (1400, 2000), (1000, 1400)), 0.3),  # portrait scans: 2x2 or 3x1 grids
    (("screenshot", (700, 1100), (1600, 2600)), 0.25),  # wide desktop captures: 1x3 / 1x4
    (("phone", (1900, 2600), (900, 1200)), 0.15),  # tall phone captures: 3x1 / 4x1
    (("small", (32, 128), (32, 128)), 0.2),  # icons, thumbnails: base + one tile
    (("banner", (60, 140), (900, 1600)), 0.1),  # one text line: 1x4, most feature rows unpadded away
]
GRID_IMAGE_COUNTS = [(0, 0.2), (1, 0.55), (2, 0.25)]
# "wide": the tiny tokenizer and tower with a random-init LLM of a real model's width (Qwen2.5-0.5B is 896), so linear
# layers, not attention, dominate a token's cost as in real models; the tiny LLM (width 96) is attention-bound.
WIDE_TEXT = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
}


def pick(rng: random.Random, weighted: list):
    return rng.choices([value for value, _ in weighted], weights=[w for _, w in weighted])[0]


def draw_text(rng: random.Random, long_scale: float) -> tuple[str, str]:
    """(question of 4-16 words, answer drawn from ANSWER_WORDS, its long ones scaled by long_scale)."""
    lo, hi = pick(rng, ANSWER_WORDS)
    answer = " ".join(rng.choices(WORDS, k=max(1, int(rng.randint(lo, hi) * (long_scale if hi > 8 else 1)))))
    return " ".join(rng.choices(WORDS, k=rng.randint(4, 16))) + "?", answer


def chat_row(row_id: str, images: list, question: str, answer: str) -> dict:
    messages = [
        {"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    return {"id": row_id, "images": images, "messages": messages}


def mixed_rows(n: int, seed: int, long_scale: float = 1.0) -> list[dict]:
    """n rows with widely mixed answer lengths and 0-2 small images each: one tile per image (--grids single)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question, answer = draw_text(rng, long_scale)  # drawn before the images, as when packing.json was measured
        images = [
            Image.new("RGB", (rng.randint(32, 96), rng.randint(32, 96)), tuple(rng.choices(range(256), k=3)))
            for _ in range(pick(rng, IMAGE_COUNTS))
        ]
        rows.append(chat_row(f"mix-{i}", images, question, answer))
    return rows


def blocks_image(height: int, width: int, seed: int) -> Image.Image:
    """Random 16-px blocks at full size (cheap to make): every tile differs, so a misplaced tile changes the loss."""
    cells = np.random.default_rng(seed).integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((width, height), Image.NEAREST)


def grid_rows(n: int, seed: int, long_scale: float = 1.0) -> list[dict]:
    """n rows with mixed answer lengths and 0-2 images of IMAGE_KINDS each (pages, wide and tall screenshots, small
    images, banners), so AnyRes gives every row its own image-token count (--grids mixed)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question, answer = draw_text(rng, long_scale)
        kinds = [pick(rng, IMAGE_KINDS) for _ in range(pick(rng, GRID_IMAGE_COUNTS))]
        images = [blocks_image(rng.randint(*h), rng.randint(*w), rng.randrange(2**31)) for _, h, w in kinds]
        rows.append({**chat_row(f"grid-{i}", images, question, answer), "kinds": [k for k, _, _ in kinds]})
    return rows


def build_transformers_twin(model, attn: str):
    """transformers' Llava (LlavaNext when AnyRes is on) with our weights; its config from scripts/export_llava.py,
    which writes every field whose default differs from ours."""
    config = build_llava_config(model.config)
    anyres = model.config.image_grid_pinpoints is not None
    twin = (LlavaNextForConditionalGeneration if anyres else LlavaForConditionalGeneration)(config)
    # Same key names (image_newline included); a tied lm_head may be absent from the twin's own keys.
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise AssertionError(
            f"weights do not map onto {type(twin).__name__}: missing {missing}, unexpected {unexpected}"
        )
    twin.tie_weights()
    twin.set_attn_implementation(attn)
    twin.model.vision_tower.requires_grad_(False)  # the same trainable set as ours (frozen tower)
    return twin.train()


def build_model(args):
    """(model in train mode, processor): the tiny backbones (AnyRes up to MAX_TILES tiles unless --grids single), or
    their tokenizer and tower with a WIDE_TEXT LLM."""
    paths = backbone_paths(args.backbones)
    vision, text = paths["vision-siglip"], paths["llm-qwen2"]
    torch.manual_seed(args.seed)
    anyres = {"max_tiles": MAX_TILES} if args.grids == "mixed" else {}
    model = MiniLlavaForConditionalGeneration.from_backbones(vision, text, **anyres)
    processor = MiniLlavaProcessor.from_backbones(vision, text, config=model.config)
    if args.llm == "wide":
        config = copy.deepcopy(model.config)
        text = {k: v for k, v in config.text_config.to_dict().items() if k != "layer_types"}  # re-derived
        config.text_config = type(config.text_config)(**{**text, **WIDE_TEXT})
        torch.manual_seed(args.seed)
        model, tiny = type(model)(config), model
        model.generation_config = tiny.generation_config  # the tiny LLM's stop ids
    model.set_attn_implementation(args.attn)
    return model.train(), processor


def make_steps(model, batches: list[dict], cpu_times: list[float]):
    """A closure running one forward + backward + AdamW step per batch, appending its process CPU time (robust to
    neighbours' load when torch runs on one thread). use_cache=False as TRL passes it: packed rows need it
    (masking_utils builds the per-sample mask only without a cache); the others then skip an empty cache alike."""
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-5)

    def run():
        start_cpu = time.process_time()
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            model(**batch, use_cache=False).loss.backward()
            optimizer.step()
        cpu_times.append(time.process_time() - start_cpu)

    return run


def initial_losses(models: dict, batches: dict) -> dict[str, float]:
    with torch.no_grad():
        return {name: models[name](**batches[name][0], use_cache=False).loss.item() for name in models}


def collate(args, model, processor) -> tuple[list[dict], dict[str, list[dict]]]:
    """(rows, {candidate: batches}): the same rows packed, padded, and padded for the transformers twin."""
    n_rows, batch_size = (8, 4) if args.quick else (args.batches * args.batch_size, args.batch_size)
    make_rows = grid_rows if args.grids == "mixed" else mixed_rows
    rows = make_rows(n_rows, args.seed, long_scale=0.2 if args.quick else 1.0)
    chunks = [rows[i : i + batch_size] for i in range(0, n_rows, batch_size)]
    padded = MiniLlavaDataCollator(processor, stop_token_ids=stop_ids(model))
    packed = MiniLlavaDataCollator(processor, stop_token_ids=stop_ids(model), padding_free=True)
    batches = {"packed": [packed(c) for c in chunks], "padded": [padded(c) for c in chunks]}
    if padded.dropped or packed.dropped:  # a dropped row would make the candidates' work differ
        raise AssertionError(f"the collator dropped rows: padded {padded.dropped}, packed {packed.dropped}")
    # The very same tensors; LlavaNext derives each image's grid from image_sizes (no budget: the grids agree).
    batches["llava_padded"] = [{k: v for k, v in b.items() if k != "image_grids"} for b in batches["padded"]]
    return rows, batches


def workload(rows: list[dict], batches: dict, image_token_id: int) -> dict:
    """What the rows cost: useful vs padded positions, row lengths, image tokens per row, grids and image kinds."""
    lengths = [int(m.sum()) for b in batches["padded"] for m in b["attention_mask"]]
    row_images = [int(n) for b in batches["padded"] for n in (b["input_ids"] == image_token_id).sum(-1)]
    grids = [f"{r}x{c}" for b in batches["padded"] for r, c in b.get("image_grids", torch.empty(0, 2)).tolist()]
    computed_padded = sum(b["input_ids"].numel() for b in batches["padded"])
    return {
        "rows": len(rows),
        "batch_size": batches["padded"][0]["input_ids"].shape[0],
        "steps_per_call": len(batches["padded"]),
        "useful_tokens": sum(lengths),
        "padded_tokens_computed": computed_padded,
        "padding_fraction": 1 - sum(lengths) / computed_padded,
        "row_length_min": min(lengths),
        "row_length_median": statistics.median(lengths),
        "row_length_max": max(lengths),
        "image_tokens": sum(row_images),
        "row_image_tokens": row_images,
        "image_grids": dict(collections.Counter(grids)),
        "image_kinds": dict(collections.Counter(k for r in rows for k in r.get("kinds", []))),
    }


def bench(args) -> dict:
    model, processor = build_model(args)
    rows, batches = collate(args, model, processor)
    twin = build_transformers_twin(model, args.attn)
    models = {"packed": model, "padded": copy.deepcopy(model), "llava_padded": twin}
    losses = initial_losses(models, batches)
    if max(losses.values()) - min(losses.values()) > 1e-4:  # not the same work: the ratios would mean nothing
        raise AssertionError(f"initial losses differ: {losses}")
    if len({count(trainable_parameters(m)) for m in models.values()}) != 1:
        raise AssertionError("trainable sets differ")
    repeats = args.repeats or (2 if args.quick else 5)
    cpu = {name: [] for name in models}
    times = interleave(
        {name: make_steps(models[name], batches[name], cpu[name]) for name in models}, repeats, warmup=1
    )
    cpu = {name: values[1:] for name, values in cpu.items()}  # the warm-up call is not kept
    out = {
        "attn": args.attn,
        "llm": args.llm,
        "grids": args.grids,
        "hidden_size": model.config.text_config.hidden_size,
        "baseline": type(twin).__name__,
        "max_tiles": MAX_TILES if args.grids == "mixed" else 1,
        **workload(rows, batches, processor.image_token_id),
        "initial_losses": losses,
    }
    useful = out["useful_tokens"]
    for name in models:
        s, c = summarize(times[name]), summarize(cpu[name])
        out[name] = {
            **s,
            "useful_tokens_per_s": useful / s["median_s"],
            "cpu": c,
            "useful_tokens_per_cpu_s": useful / c["median_s"],
        }
    for a, b in (("packed", "padded"), ("packed", "llava_padded"), ("padded", "llava_padded")):
        out[f"ratio_{a}_over_{b}"] = ratios(times[b], times[a])  # tokens/s ratio = inverse time ratio
        out[f"cpu_ratio_{a}_over_{b}"] = ratios(cpu[b], cpu[a])
    return out


def print_results(r: dict) -> None:
    rows = r["row_image_tokens"]
    print(
        f"{r['rows']} rows in {r['steps_per_call']} steps of {r['batch_size']}, {r['attn']}, LLM {r['llm']} "
        f"(width {r['hidden_size']}), grids {r['grids']} {r['image_grids'] or ''}: row length "
        f"{r['row_length_min']}-{r['row_length_max']} (median {r['row_length_median']}), image tokens per row "
        f"{min(rows)}-{max(rows)} (median {statistics.median(rows)}), {r['useful_tokens']} useful tokens, padding "
        f"{r['padding_fraction']:.1%} of the padded batches; initial losses {r['initial_losses']}"
    )
    table = [
        [
            name,
            r[name]["median_s"],
            r[name]["useful_tokens_per_s"],
            r[name]["cpu"]["median_s"],
            r[name]["useful_tokens_per_cpu_s"],
            r[name]["n"],
        ]
        for name in ("packed", "padded", "llava_padded")
    ]
    for name in ("packed_over_padded", "packed_over_llava_padded", "padded_over_llava_padded"):
        x, c = r[f"ratio_{name}"], r[f"cpu_ratio_{name}"]
        table.append(
            [
                name,
                f"minima {x['of_minima']:.3g}",
                x["of_medians"],
                f"minima {c['of_minima']:.3g}",
                c["of_medians"],
                "",
            ]
        )
    print_table(["candidate", "wall s/call", "tokens/s (wall)", "cpu s/call", "tokens/cpu-s", "n"], table)
    print(f"llava_padded = transformers' {r['baseline']} with the same weights on the padded batches")


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--backbones", default=None, help="folder of make_tiny_backbones (else built in a temp dir)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--llm", default="tiny", choices=["tiny", "wide"], help="the tiny LLM or WIDE_TEXT's")
    grids_help = f"AnyRes up to {MAX_TILES} tiles on pages, screenshots, small images; or one tile per image"
    parser.add_argument("--grids", default="mixed", choices=["mixed", "single"], help=grids_help)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="batches (= optimizer steps) per timed call")
    args = parser.parse_args(argv)
    machine = start(args)
    r = bench(args)
    print_machine(machine)
    print_results(r)
    notes = [
        "useful tokens = every non-pad token (labelled or not); all three candidates see the same rows",
        "llava_padded is transformers' LlavaNext (--grids mixed) or Llava (--grids single), same weights",
        "cpu ratios use process CPU time: with --threads 1 they are the least disturbed by other jobs",
        "packed on CPU: sdpa/eager attend over the whole packed row with a block-diagonal mask (sum L)^2, padded "
        "over B * max(L)^2; only flash attention's varlen kernels skip the cross-sample blocks",
    ]
    return finish("packing", args, machine, r, notes)


if __name__ == "__main__":
    main()
