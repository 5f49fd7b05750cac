"""Padding-free packing vs padding: useful (non-pad) training tokens per second of forward + backward + AdamW steps on
rows of mixed length, our model packed (MiniLlavaDataCollator(padding_free=True)) vs padded vs transformers' Llava
padded (same weights, same batches); the three ratios side by side, from wall time and from process CPU time.

    python -m bench.bench_packing [--quick] [--json OUT] [--backbones DIR] [--attn sdpa|eager] [--llm tiny|wide]
"""

import copy
import random
import statistics
import time

import torch
from PIL import Image
from transformers import LlavaConfig, LlavaForConditionalGeneration

from bench.harness import base_parser, finish, interleave, print_machine, print_table, ratios, start, summarize
from bench.tiny_setup import build_tiny, stop_ids
from bench.workloads import count, trainable_parameters
from processing.collator import MiniLlavaDataCollator

WORDS = "invoice total vendor amount due date paid receipt tax item quantity unit price order number".split()
# Answer length in words: mostly short, some medium, a few long (the shape of a VQA + captioning mix).
ANSWER_WORDS = [((1, 8), 0.7), ((20, 60), 0.2), ((100, 250), 0.1)]
IMAGE_COUNTS = [(0, 0.25), (1, 0.5), (2, 0.25)]  # images per row: 0, 64 or 128 image tokens on the tiny model
# "wide": the tiny tokenizer and tower with a random-init LLM of a real model's width (Qwen2.5-0.5B is 896), so linear
# layers, not attention, dominate a token's cost as in real models; the tiny LLM (width 96) is attention-bound.
WIDE_TEXT = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 2, "head_dim": 64}  # fmt: skip


def pick(rng: random.Random, weighted: list):
    return rng.choices([value for value, _ in weighted], weights=[w for _, w in weighted])[0]


def mixed_rows(n: int, seed: int, long_scale: float = 1.0) -> list[dict]:
    """n canonical rows with widely mixed answer lengths and 0-2 images each (the tiny model has no image splitting
    through the collator, so image token counts vary only by the number of images)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lo, hi = pick(rng, ANSWER_WORDS)
        answer = " ".join(rng.choices(WORDS, k=max(1, int(rng.randint(lo, hi) * (long_scale if hi > 8 else 1)))))
        question = " ".join(rng.choices(WORDS, k=rng.randint(4, 16))) + "?"
        n_images = pick(rng, IMAGE_COUNTS)
        images = [Image.new("RGB", (rng.randint(32, 96), rng.randint(32, 96)), tuple(rng.choices(range(256), k=3)))
                  for _ in range(n_images)]  # fmt: skip
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        messages = [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        rows.append({"id": f"mix-{i}", "images": images, "messages": messages})
    return rows


def build_llava_twin(model) -> LlavaForConditionalGeneration:
    """transformers' Llava with our model's weights: every field that differs from Llava's defaults set explicitly."""
    c = model.config
    config = LlavaConfig(vision_config=c.vision_config.to_dict(), text_config=c.text_config.to_dict(),
                         image_token_index=c.image_token_id, image_seq_length=c.num_image_tokens,
                         projector_hidden_act=c.projector_hidden_act, vision_feature_layer=c.vision_feature_layer,
                         vision_feature_select_strategy=c.vision_feature_select_strategy,
                         multimodal_projector_bias=True, tie_word_embeddings=c.tie_word_embeddings)  # fmt: skip
    config._attn_implementation = c._attn_implementation
    llava = LlavaForConditionalGeneration(config)
    llava.load_state_dict(model.state_dict())  # same key names; strict, so any mismatch raises
    llava.model.vision_tower.requires_grad_(False)  # the same trainable set as ours (frozen tower)
    return llava.train()


def build_model(args):
    """(model in train mode, processor): the tiny backbones, or their tokenizer and tower with a WIDE_TEXT LLM."""
    model, processor = build_tiny(args.backbones, seed=args.seed)
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


def bench(args) -> dict:
    model, processor = build_model(args)
    n_rows, batch_size = (8, 4) if args.quick else (args.batches * args.batch_size, args.batch_size)
    rows = mixed_rows(n_rows, args.seed, long_scale=0.2 if args.quick else 1.0)
    chunks = [rows[i : i + batch_size] for i in range(0, n_rows, batch_size)]
    padded = MiniLlavaDataCollator(processor, stop_token_ids=stop_ids(model))
    packed = MiniLlavaDataCollator(processor, stop_token_ids=stop_ids(model), padding_free=True)
    batches = {"packed": [packed(c) for c in chunks], "padded": [padded(c) for c in chunks]}
    batches["llava_padded"] = batches["padded"]  # the very same tensors
    models = {"packed": model, "padded": copy.deepcopy(model), "llava_padded": build_llava_twin(model)}
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
    lengths = [int(m.sum()) for b in batches["padded"] for m in b["attention_mask"]]
    useful = sum(lengths)
    computed_padded = sum(b["input_ids"].numel() for b in batches["padded"])
    out = {"attn": args.attn, "llm": args.llm, "hidden_size": model.config.text_config.hidden_size,
           "rows": n_rows, "batch_size": batch_size, "steps_per_call": len(chunks),
           "useful_tokens": useful, "padded_tokens_computed": computed_padded,
           "padding_fraction": 1 - useful / computed_padded, "row_length_min": min(lengths),
           "row_length_median": statistics.median(lengths), "row_length_max": max(lengths),
           "image_tokens": sum(int((b["input_ids"] == processor.image_token_id).sum()) for b in batches["packed"]),
           "initial_losses": losses}  # fmt: skip
    for name in models:
        s, c = summarize(times[name]), summarize(cpu[name])
        out[name] = {**s, "useful_tokens_per_s": useful / s["median_s"], "cpu": c,
                     "useful_tokens_per_cpu_s": useful / c["median_s"]}  # fmt: skip
    for a, b in (("packed", "padded"), ("packed", "llava_padded"), ("padded", "llava_padded")):
        out[f"ratio_{a}_over_{b}"] = ratios(times[b], times[a])  # tokens/s ratio = inverse time ratio
        out[f"cpu_ratio_{a}_over_{b}"] = ratios(cpu[b], cpu[a])
    return out


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--backbones", default=None, help="folder of make_tiny_backbones (else built in a temp dir)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--llm", default="tiny", choices=["tiny", "wide"], help="the tiny LLM or WIDE_TEXT's")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="batches (= optimizer steps) per timed call")
    args = parser.parse_args(argv)
    machine = start(args)
    r = bench(args)
    print_machine(machine)
    print(f"{r['rows']} rows in {r['steps_per_call']} steps of {r['batch_size']}, {args.attn}, LLM {args.llm} "
          f"(width {r['hidden_size']}): row length "
          f"{r['row_length_min']}-{r['row_length_max']} (median {r['row_length_median']}), {r['useful_tokens']} "
          f"useful tokens, padding {r['padding_fraction']:.1%} of the padded batches")  # fmt: skip
    rows = [[name, r[name]["median_s"], r[name]["useful_tokens_per_s"], r[name]["cpu"]["median_s"],
             r[name]["useful_tokens_per_cpu_s"], r[name]["n"]]
            for name in ("packed", "padded", "llava_padded")]  # fmt: skip
    for name in ("packed_over_padded", "packed_over_llava_padded", "padded_over_llava_padded"):
        x, c = r[f"ratio_{name}"], r[f"cpu_ratio_{name}"]
        rows.append([name, f"minima {x['of_minima']:.3g}", x["of_medians"], f"minima {c['of_minima']:.3g}",
                     c["of_medians"], ""])  # fmt: skip
    print_table(["candidate", "wall s/call", "tokens/s (wall)", "cpu s/call", "tokens/cpu-s", "n"], rows)
    notes = ["useful tokens = every non-pad token (labelled or not); all three candidates see the same rows",
             "cpu ratios use process CPU time: with --threads 1 they are the least disturbed by other jobs",
             "packed on CPU: sdpa/eager attend over the whole packed row with a block-diagonal mask (sum L)^2, padded "
             "over B * max(L)^2; only flash attention's varlen kernels skip the cross-sample blocks"]  # fmt: skip
    return finish("packing", args, machine, r, notes)


if __name__ == "__main__":
    main()
