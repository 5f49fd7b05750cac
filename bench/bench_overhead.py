"""Multimodal overhead: our training step vs the bare LLM's step (AutoModelForCausalLM from the same text config) on
the same number of tokens, plus the frozen vision tower's forward alone; ratio ours / (bare LLM + vision).

A ratio near 1 means the merge, the projector and the bookkeeping cost next to nothing beyond the two backbones.

    python -m bench.bench_overhead [--quick] [--json bench/results/overhead.json]
"""

import torch
from transformers import AutoModelForCausalLM

from bench.harness import (
    base_parser,
    finish,
    interleave,
    print_machine,
    print_table,
    ratio,
    ratios,
    sizes_and_repeats,
    start,
    summarize,
)
from bench.workloads import ATTN, build_minillava, count, make_batch, make_train_step, size_configs


def bench_size(size: str, repeats: int, seed: int) -> dict:
    vision, text = size_configs(size)
    torch.manual_seed(seed)
    ours = build_minillava(vision, text)
    text._attn_implementation = ATTN
    llm = AutoModelForCausalLM.from_config(text).train()
    n_img = ours.config.num_image_tokens
    batch = make_batch(size, n_img, seed)
    ours_batch = batch["ours"]
    # Same tokens for the bare LLM: the image slots hold ordinary ids and keep the -100 labels.
    llm_batch = {k: ours_batch[k] for k in ("input_ids", "attention_mask", "labels")}
    tower = ours.model.vision_tower

    def vision_forward():  # what our model runs for the frozen tower: no autograd, all hidden states
        with torch.no_grad():
            tower(pixel_values=ours_batch["pixel_values"], output_hidden_states=True)

    times = interleave(
        {"ours": make_train_step(ours, ours_batch), "llm": make_train_step(llm, llm_batch), "vision": vision_forward},
        repeats,
        warmup=2,
    )
    out = {
        "batch_size": batch["batch_size"],
        "seq_len": batch["seq_len"],
        "image_tokens": n_img,
        "params": {
            "ours": count(ours.parameters()),
            "llm": count(llm.parameters()),
            "vision": count(tower.parameters()),
            "projector": count(ours.model.multi_modal_projector.parameters()),
        },
    }
    for name in ("ours", "llm", "vision"):
        out[name] = summarize(times[name])
    parts = out["llm"]["median_s"] + out["vision"]["median_s"]
    out["ratio_ours_over_llm_plus_vision"] = ratio(out["ours"]["median_s"], parts)
    paired_parts = [a + b for a, b in zip(times["llm"], times["vision"])]
    out["ratio_ours_over_llm_plus_vision_all"] = ratios(times["ours"], paired_parts)
    out["ratio_ours_over_llm"] = ratio(out["ours"]["median_s"], out["llm"]["median_s"])
    out["vision_share_of_ours"] = ratio(out["vision"]["median_s"], out["ours"]["median_s"])
    return out


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--sizes", nargs="+", default=None, help="sizes from bench.workloads.SIZES")
    args = parser.parse_args(argv)
    machine = start(args)
    results = {size: bench_size(size, repeats, args.seed) for size, repeats in sizes_and_repeats(args, 5)}
    print_machine(machine)
    print("Multimodal overhead: step = forward + backward + AdamW step; vision = frozen tower forward (no grad)")
    rows = []
    for size, r in results.items():
        rows.append(
            [
                size,
                r["batch_size"],
                r["seq_len"],
                r["ours"]["median_s"],
                r["llm"]["median_s"],
                r["vision"]["median_s"],
                r["ratio_ours_over_llm_plus_vision"],
                r["ratio_ours_over_llm"],
                r["ours"]["n"],
            ]
        )
        all_ = r["ratio_ours_over_llm_plus_vision_all"]
        extra = f"(of minima {all_['of_minima']:.3g}, paired {all_['paired_median']:.3g})"
        rows.append(["", "", "", "", "", "", extra, "", ""])
    headers = ["size", "batch", "seq", "ours s", "bare LLM s", "vision s", "ours/(LLM+vision)", "ours/LLM", "n"]
    print_table(headers, rows)
    notes = [
        "the bare LLM trains every parameter; ours trains LLM + projector (tower frozen), so ours also pays "
        "the projector's forward/backward/AdamW: that is part of the multimodal overhead measured",
        "shared CPU cores: absolute times are noisy, the interleaved ratio is the figure to read",
    ]
    return finish("overhead", args, machine, results, notes)


if __name__ == "__main__":
    main()
