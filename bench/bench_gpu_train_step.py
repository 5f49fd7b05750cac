"""For a lent GPU: a random-initialised Qwen2.5-1.5B-architecture LLM + SigLIP-so400m in bf16, stage-2 train plan
(projector + LoRA r=16: recipes.builder's plan, LoRA applied with PEFT as SFTTrainer does), gradient checkpointing;
samples/s, tokens/s, peak memory (torch.cuda.max_memory_allocated) next to memory_plan's estimate, and MFU.
`--quick`: tiny configs on CPU, no MFU.

    python -m bench.bench_gpu_train_step [--llm qwen2.5-1.5b-instruct] [--batch_size 4] [--seq_len 2048] [--json OUT]
    python -m bench.bench_gpu_train_step --quick          # CPU smoke run (what the tests do)
"""

import time

import torch

from bench.harness import base_parser, finish, print_machine, print_table, start, summarize
from bench.memory_plan import GIB, build_meta, estimate, module_params
from bench.workloads import size_configs
from modeling_minillava import MiniLlavaConfig, MiniLlavaForConditionalGeneration

# Dense bf16 tensor-core peaks (vendor datasheets, TFLOP/s), matched in order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
]


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in device_name), None)


def build(args, device: torch.device, dtype: torch.dtype):
    if args.quick:
        vision, text = size_configs("tiny")
        config = MiniLlavaConfig(
            vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=text.vocab_size - 1
        )
    else:
        config = build_meta(args.llm).config  # the real architecture's config, no weights
    with device:
        model = MiniLlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.train()


def make_batch(config, batch_size: int, seq_len: int, device, dtype, seed: int) -> dict:
    """[4 text][one image's slots][text]: seq_len tokens per sample, image slots included."""
    n_img = config.num_image_tokens
    if seq_len <= n_img + 8:
        raise ValueError(f"--seq_len {seq_len} must exceed the {n_img} image tokens by some text; raise it.")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.text_config.vocab_size, (batch_size, seq_len), generator=g)
    image_mask = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    image_mask[:, 4 : 4 + n_img] = True
    size = config.vision_config.image_size
    batch = {
        "input_ids": ids.masked_fill(image_mask, config.image_token_id),
        "labels": ids.masked_fill(image_mask, -100),
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=g).to(dtype),
    }
    return {k: v.to(device) for k, v in batch.items()}


def matmul_params(module, trainable: bool | None = None) -> int:
    """Weights of the Linear layers in `module` (LoRA's A/B included), optionally only the (non-)trainable ones."""
    return sum(
        m.weight.numel()
        for m in module.modules()
        if isinstance(m, torch.nn.Linear) and trainable in (None, m.weight.requires_grad)
    )


def model_flops_per_step(model, batch_size: int, seq_len: int, gradient_checkpointing: bool) -> tuple[int, int]:
    """Trainable-aware model FLOPs of one step, and hardware FLOPs (+ the checkpointing recompute).

    LLM, per token: frozen matmul weights 4N (forward + activation grads), trainable ones (LoRA) 6N (+ weight grads),
    attention 3 x 4*L*h*s (forward + 2x backward; the causal mask is not halved); the frozen tower: forward only,
    2N + 4*L*h*n per patch; the projector 6N per image token. Recompute adds one LLM forward (hardware FLOPs only).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg, text, vision = base.config, base.config.text_config, base.config.vision_config
    tokens = batch_size * seq_len
    frozen_mm = matmul_params(base.model.language_model, False) + base.lm_head.weight.numel()
    trainable_mm = matmul_params(base.model.language_model, True)
    attn = 4 * text.num_hidden_layers * text.hidden_size * seq_len
    patches = cfg.num_vision_tokens
    vision_flops = (
        batch_size
        * patches
        * (2 * matmul_params(base.model.vision_tower) + 4 * vision.num_hidden_layers * vision.hidden_size * patches)
    )
    projector = batch_size * cfg.num_image_tokens * 6 * matmul_params(base.model.multi_modal_projector, True)
    model_flops = vision_flops + projector + tokens * (4 * frozen_mm + 6 * trainable_mm + 3 * attn)
    recompute = tokens * (2 * (frozen_mm + trainable_mm) + attn) if gradient_checkpointing else 0
    return model_flops, model_flops + recompute


def parse_args(argv):
    parser = base_parser(__doc__)
    parser.add_argument("--llm", default="qwen2.5-1.5b-instruct", help="a recipes/backbones/*.json LLM")
    parser.add_argument("--batch_size", type=int, default=None, help="default 4 (quick: 2)")
    parser.add_argument("--seq_len", type=int, default=None, help="tokens per sample incl. image slots; 2048")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; quick: 2)")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--no_gradient_checkpointing", action="store_true")
    parser.add_argument("--peak_tflops", type=float, default=None, help="bf16 peak of the GPU if not in the table")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (2 if args.quick else 4)
    args.seq_len = args.seq_len or (96 if args.quick else 2048)
    args.steps = args.steps or (2 if args.quick else 10)
    args.gradient_checkpointing = not args.no_gradient_checkpointing
    return args


def stage2_model(args, device: torch.device, dtype: torch.dtype):
    """The stage-2 train plan (projector + LoRA) on the model, as run_sft builds it; (model, trainable params)."""
    from peft import get_peft_model  # trl + peft: imported only when run

    from recipes.arguments import ModelArguments
    from recipes.builder import apply_train_plan, lora_config
    from recipes.provenance import train_plan_counts

    plan = ModelArguments(lora_r=args.lora_r)
    model = apply_train_plan(build(args, device, dtype), plan, gradient_checkpointing=args.gradient_checkpointing)
    if args.gradient_checkpointing:  # as SFTTrainer does before wrapping: PEFT makes the inputs require grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora_config(model, plan))
    return model, sum(c["trainable"] for c in train_plan_counts(model).values())


def time_steps(model, batch: dict, steps: int, warmup: int, cuda: bool) -> list[float]:
    """Seconds of each of `steps` AdamW steps after `warmup` untimed ones (allocator, kernels)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def utilization(args, model, median_s: float, peak: float | None) -> dict:
    """Model / hardware FLOPs per step and, with a known bf16 peak, MFU and HFU."""
    model_flops, hw_flops = model_flops_per_step(model, args.batch_size, args.seq_len, args.gradient_checkpointing)
    return {
        "model_flops_per_step": model_flops,
        "hardware_flops_per_step": hw_flops,
        "peak_bf16_tflops": peak,
        "mfu": model_flops / (median_s * peak * 1e12) if peak else None,
        "hfu": hw_flops / (median_s * peak * 1e12) if peak else None,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = start(args)
    cuda = torch.cuda.is_available() and not args.quick
    if not args.quick and not cuda:
        raise SystemExit("No CUDA device: this benchmark needs a GPU (use --quick for the CPU smoke run).")
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    batch_size, seq_len = args.batch_size, args.seq_len
    model, trainable_params = stage2_model(args, device, dtype)
    batch = make_batch(model.get_base_model().config, batch_size, seq_len, device, dtype, args.seed)
    s = summarize(time_steps(model, batch, args.steps, warmup=1 if args.quick else 2, cuda=cuda))
    peak = peak_tflops(machine["gpu"] or "", args.peak_tflops) if cuda else None
    results = {
        "device": machine["gpu"] or "cpu",
        "dtype": str(dtype),
        "llm": "tiny" if args.quick else args.llm,
        "plan": f"stage 2: projector + LoRA r={args.lora_r}",
        "gradient_checkpointing": args.gradient_checkpointing,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "trainable_params": trainable_params,
        "step": s,
        "samples_per_s": batch_size / s["median_s"],
        "tokens_per_s": batch_size * seq_len / s["median_s"],
        **utilization(args, model, s["median_s"], peak),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
    }
    if cuda:  # the estimate for the same setting, to judge memory_plan's formula
        meta = build_meta(args.llm)
        est = estimate(meta, module_params(meta), trainable_params, batch_size, seq_len)
        results["estimated_peak_gib"] = est["lora"]["peak_gib"]
    print_machine(machine)
    columns = ["device", "llm", "batch", "seq", "step s", "samples/s", "tokens/s", "peak GiB", "MFU", "HFU"]
    keys = ["device", "llm", "batch_size", "seq_len", "step", "samples_per_s", "tokens_per_s", "peak_memory_gib"]
    row = [s["median_s"] if key == "step" else results[key] or "-" for key in [*keys, "mfu", "hfu"]]
    print_table(columns, [row])
    notes = [
        "MFU = trainable-aware model FLOPs per step / (median step time * bf16 peak); see model_flops_per_step",
        "quick mode: tiny configs on CPU in float32; no MFU or peak memory",
    ]
    return finish("gpu_train_step", args, machine, results, notes)


if __name__ == "__main__":
    main()
