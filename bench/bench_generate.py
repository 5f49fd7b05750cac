"""Generation: batched (bs 16, KV cache, left padding) vs one-by-one samples/s on a synthetic test split, greedy,
same max_new_tokens; checks that both give identical tokens (the model guarantees it for left-aligned rows).

    python -m bench.bench_generate [--quick] [--json bench/results/generate.json]
"""

import torch

from bench.harness import base_parser, finish, interleave, print_machine, print_table, ratios, start, summarize
from bench.tiny_setup import build_tiny, stop_ids, synthetic_rows
from processing.image_loading import load_images


def prompt_inputs(processor, rows: list[dict]):
    """One left-padded batch of generation prompts (the user turn of each row + the assistant header)."""
    texts = [processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True) for row in rows]
    images = [load_images(row["images"]) for row in rows]
    return processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")


def until_stop(tokens: torch.Tensor, stops: list[int]) -> list[int]:
    """New tokens up to and including the first stop id (batched rows are padded after it)."""
    out = []
    for token in tokens.tolist():
        out.append(token)
        if token in stops:
            break
    return out


def make_runner(model, batches, max_new_tokens: int, stops: list[int], outputs: list):
    def run():
        outputs.clear()
        for inputs in batches:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True)
            new = out[:, inputs["input_ids"].shape[1] :]  # both models return prompt + new tokens
            outputs.extend(until_stop(row, stops) for row in new)

    return run


def print_report(results: dict) -> None:
    """The timing table, then whether batched and one-by-one generation gave the same tokens."""
    modes = (("batched", results["batch_size"], "batched"), ("one-by-one", 1, "one_by_one"))
    rows = [
        [label, size, results[k]["median_s"], results[k]["samples_per_s"], results[k]["n"]] for label, size, k in modes
    ]
    rows.append(["batched/one-by-one", "", "", results["ratio_batched_over_one_by_one"], ""])
    n, max_new = results["n"], results["max_new_tokens"]
    print(f"Generation on {n} synthetic test rows, greedy, max_new_tokens={max_new}, KV cache:")
    print_table(["mode", "batch", "total s", "samples/s", "n"], rows)
    identical, mismatches = results["outputs_identical"], results["mismatched_rows"]
    print(
        f"outputs identical (batched vs one-by-one, up to the first stop token): {identical}"
        + ("" if identical else f"; rows differing: {mismatches}")
    )


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--n", type=int, default=None, help="test rows (default 32; quick: 8)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default 16; quick: 8")
    parser.add_argument("--backbones", default=None, help="folder of make_tiny_backbones (default: built in a temp)")
    args = parser.parse_args(argv)
    machine = start(args)
    n = args.n or (8 if args.quick else 32)
    max_new = args.max_new_tokens or (8 if args.quick else 16)
    repeats = args.repeats or (1 if args.quick else 3)
    model, processor = build_tiny(args.backbones, args.seed)
    rows = synthetic_rows("test", n, args.seed)
    stops = stop_ids(model)
    batched = [prompt_inputs(processor, rows[i : i + args.batch_size]) for i in range(0, n, args.batch_size)]
    single = [prompt_inputs(processor, [row]) for row in rows]  # prompts built outside the timed region
    out_batched, out_single = [], []
    times = interleave(
        {
            "batched": make_runner(model, batched, max_new, stops, out_batched),
            "one_by_one": make_runner(model, single, max_new, stops, out_single),
        },
        repeats,
        warmup=0 if args.quick else 1,
    )
    identical = out_batched == out_single
    mismatches = [i for i, (a, b) in enumerate(zip(out_batched, out_single)) if a != b]
    results = {
        "n": n,
        "batch_size": args.batch_size,
        "max_new_tokens": max_new,
        "greedy": True,
        "kv_cache": True,
        "padding_side": "left",
        "model": "tiny SigLIP + tiny Qwen2 (random init, tests' backbones)",
        "image_tokens": model.config.num_image_tokens,
        "prompt_len_max": max(b["input_ids"].shape[1] for b in batched),
        "mean_new_tokens": sum(map(len, out_batched)) / n,
        "outputs_identical": identical,
        "mismatched_rows": mismatches,
    }
    for name in ("batched", "one_by_one"):
        s = summarize(times[name])
        results[name] = {**s, "samples_per_s": n / s["median_s"]}
    speed = ratios(times["one_by_one"], times["batched"])  # same rows each way: speed ratio = inverse time ratio
    results["ratio_batched_over_one_by_one"] = speed["of_medians"]
    results["ratio_batched_over_one_by_one_all"] = speed
    print_machine(machine)
    print_report(results)
    notes = [
        "prompt processing (images + template) is done before timing; only model.generate is timed",
        "a random-init model: speed does not depend on the weights, but rows may stop early on a stop id "
        "(mean_new_tokens says how many were generated)",
    ]
    return finish("generate", args, machine, results, notes)


if __name__ == "__main__":
    main()
