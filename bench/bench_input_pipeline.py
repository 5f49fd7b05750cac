"""Input pipeline: the collator (PNG decode, chat template, tokenization, labels, image processing) in samples/s vs
what a training step consumes at the same batch size; ratio > 1 means one loader worker keeps up with training.

    python -m bench.bench_input_pipeline [--quick] [--json bench/results/input_pipeline.json]
"""

from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

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
from bench.tiny_setup import build_tiny, stop_ids, synthetic_rows
from bench.workloads import SIZES, build_minillava, make_train_step, size_configs
from processing import MiniLlavaProcessor
from processing.collator import MiniLlavaDataCollator


def model_and_processor(size: str, tiny_model, tiny_processor):
    """tiny: the tests' backbones as they are; mid: the mid-size model with a 224 px SigLIP image processor and the
    tiny tokenizer (the ids fit the larger vocabulary)."""
    if size == "tiny":
        return tiny_model.train(), tiny_processor
    vision, text = size_configs(size)
    model = build_minillava(vision, text)
    model.config.image_token_id = tiny_processor.image_token_id  # the tiny tokenizer's placeholder
    image_size = SIZES[size]["vision"]["image_size"]
    processor = MiniLlavaProcessor(
        SiglipImageProcessorPil(size={"height": image_size, "width": image_size}),
        tiny_processor.tokenizer,
        chat_template=tiny_processor.chat_template,
        num_image_tokens=model.config.num_image_tokens,
        image_token=tiny_processor.image_token,
    )
    return model, processor


def bench_size(size: str, rows: list[dict], stops: list[int], tiny, repeats: int, batch_size: int) -> dict:
    model, processor = model_and_processor(size, *tiny)
    collator = MiniLlavaDataCollator(processor, stop_token_ids=stops)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows) - batch_size + 1, batch_size)]
    state = {"i": 0}

    def collate():  # a different batch each call, as a loader would give
        state["i"] = (state["i"] + 1) % len(batches)
        return collator(batches[state["i"]])

    train_batch = collator(batches[0])
    times = interleave({"collate": collate, "train_step": make_train_step(model, train_batch)}, repeats, warmup=1)
    out = {
        "batch_size": batch_size,
        "seq_len": train_batch["input_ids"].shape[1],
        "image_size": SIZES[size]["vision"]["image_size"],
        "image_tokens": model.config.num_image_tokens,
    }
    for name in ("collate", "train_step"):
        s = summarize(times[name])
        out[name] = {**s, "samples_per_s": batch_size / s["median_s"]}
    speed = ratios(times["train_step"], times["collate"])  # same batch size: speed ratio = inverse time ratio
    out["ratio_pipeline_over_train_step"] = speed["of_medians"]
    out["ratio_pipeline_over_train_step_all"] = speed
    return out


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--sizes", nargs="+", default=None, help="tiny and/or mid")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the size's batch size")
    parser.add_argument("--backbones", default=None, help="folder of make_tiny_backbones (default: built in a temp)")
    args = parser.parse_args(argv)
    machine = start(args)
    tiny = build_tiny(args.backbones, args.seed)
    stops = stop_ids(tiny[0])
    results = {}
    for size, repeats in sizes_and_repeats(args, 3):
        batch_size = args.batch_size or SIZES[size]["batch_size"]
        rows = synthetic_rows("train", batch_size * (2 if args.quick else 4), args.seed)
        results[size] = bench_size(size, rows, stops, tiny, repeats, batch_size)
    print_machine(machine)
    print("Input pipeline (collator, one worker, in process) vs training step (forward + backward + AdamW):")
    rows = [
        [
            size,
            r["batch_size"],
            r["image_size"],
            r["seq_len"],
            r["collate"]["samples_per_s"],
            r["train_step"]["samples_per_s"],
            r["ratio_pipeline_over_train_step"],
            r["collate"]["n"],
        ]
        for size, r in results.items()
    ]
    print_table(["size", "batch", "image px", "seq", "collate samples/s", "step samples/s", "ratio", "n"], rows)
    notes = [
        "collator input: canonical rows with PNG bytes (synthetic train split, 352-512 px renders), so the "
        "timing includes PNG decoding, resizing and normalisation",
        "train step trains everything but the frozen tower; a stage-1 (projector-only) step is faster, so the "
        "pipeline has less headroom there; DataLoader workers run collators in parallel processes",
    ]
    return finish("input_pipeline", args, machine, results, notes)


if __name__ == "__main__":
    main()
