"""Training step, ours vs transformers' LlavaForConditionalGeneration: same sub-configs, same weights, same batch and
image-token count, AdamW over the same trainable set (all but the frozen vision tower); samples/s, tokens/s, ratio.

    python -m bench.bench_train_step [--quick] [--json bench/results/train_step.json]
"""

import torch

from bench.harness import (
    base_parser,
    finish,
    interleave,
    print_machine,
    print_table,
    ratios,
    sizes_and_repeats,
    start,
    summarize,
)
from bench.workloads import (
    build_llava,
    build_minillava,
    count,
    make_batch,
    make_train_step,
    size_configs,
    trainable_parameters,
)


def bench_size(size: str, repeats: int, seed: int) -> dict:
    vision, text = size_configs(size)
    torch.manual_seed(seed)
    ours = build_minillava(vision, text)
    n_img = ours.config.num_image_tokens
    llava = build_llava(vision, text, n_img)
    llava.load_state_dict(ours.state_dict())  # same parameter names: same weights, so the losses must agree
    batch = make_batch(size, n_img, seed)
    with torch.no_grad():
        loss_ours, loss_llava = ours(**batch["ours"]).loss.item(), llava(**batch["llava"]).loss.item()
    n_ours, n_llava = count(trainable_parameters(ours)), count(trainable_parameters(llava))
    if n_ours != n_llava:
        raise AssertionError(f"trainable sets differ: ours {n_ours:,} vs llava {n_llava:,}")
    times = interleave(
        {"ours": make_train_step(ours, batch["ours"]), "llava": make_train_step(llava, batch["llava"])},
        repeats,
        warmup=2,
    )
    b, t = batch["batch_size"], batch["seq_len"]
    out = {
        "batch_size": b,
        "seq_len": t,
        "image_tokens": n_img,
        "trainable_params": n_ours,
        "total_params": count(ours.parameters()),
        "initial_loss_ours": loss_ours,
        "initial_loss_llava": loss_llava,
        "same_initial_loss": abs(loss_ours - loss_llava) < 1e-4,
    }
    for name in ("ours", "llava"):
        s = summarize(times[name])
        out[name] = {**s, "samples_per_s": b / s["median_s"], "tokens_per_s": b * t / s["median_s"]}
    speed = ratios(times["llava"], times["ours"])  # samples/s ratio = inverse time ratio
    out["ratio_ours_over_llava_samples_per_s"] = speed["of_medians"]
    out["ratio_ours_over_llava_all"] = speed
    return out


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--sizes", nargs="+", default=None, help="sizes from bench.workloads.SIZES")
    args = parser.parse_args(argv)
    machine = start(args)
    results = {size: bench_size(size, repeats, args.seed) for size, repeats in sizes_and_repeats(args, 5)}
    print_machine(machine)
    print("Training step (forward + backward + AdamW step), medians of interleaved repeats:")
    rows = []
    for size, r in results.items():
        for name in ("ours", "llava"):
            rows.append(
                [
                    size,
                    name,
                    r["batch_size"],
                    r["seq_len"],
                    r["image_tokens"],
                    r[name]["median_s"],
                    r[name]["samples_per_s"],
                    r[name]["tokens_per_s"],
                    r[name]["n"],
                ]
            )
        all_ = r["ratio_ours_over_llava_all"]
        rows.append(
            [
                size,
                "ours/llava",
                "",
                "",
                "",
                "",
                all_["of_medians"],
                f"(of minima {all_['of_minima']:.3g}, paired {all_['paired_median']:.3g})",
                "",
            ]
        )
    print_table(["size", "model", "batch", "seq", "img tok", "step s", "samples/s", "tokens/s", "n"], rows)
    notes = [
        "ratio > 1: ours is faster; ~1: same work (both run the same modules on the same tensors)",
        "shared CPU cores: absolute times are noisy, the interleaved ratio is the figure to read",
    ]
    return finish("train_step", args, machine, results, notes)


if __name__ == "__main__":
    main()
