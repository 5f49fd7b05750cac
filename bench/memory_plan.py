"""Memory plan for the real backbones (Qwen2.5-1.5B/3B/7B + SigLIP-so400m), built on the meta device: parameters per
module, trainable parameters per stage (recipes.builder's train plans) and an ESTIMATE of peak training memory for
LoRA (bf16) and QLoRA (4-bit NF4). Nothing here is measured: no GPU was available; bench_gpu_train_step.py measures it.

    python -m bench.memory_plan [--quick] [--json bench/results/memory_plan.json]
"""

import json
from pathlib import Path

import torch
from transformers import AutoConfig

from bench.harness import base_parser, finish, print_machine, print_table, start
from bench.image_tokens import IMAGES, LLAVA_NEXT_PINPOINTS
from modeling_minillava import MiniLlavaConfig, MiniLlavaForConditionalGeneration

BACKBONES = Path(__file__).resolve().parents[1] / "recipes" / "backbones"
LLMS = ["qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct", "qwen2.5-7b-instruct"]
VISION = "siglip-so400m-patch14-384"
GIB = 2**30
TEXT_TOKENS = 128  # question + short answer + chat template around one image (synthetic/DocVQA rows: 60-120)
# Bytes per parameter / element; see FORMULA.
BF16, ADAMW_PER_TRAINABLE = 2, 4 + 4 + 4 + 2  # fp32 master + m + v, bf16 grad
NF4, NF4_CONSTANTS = 0.5, 1 / 64 + 4 / (64 * 256)  # blocksize 64: 8-bit absmax (double quant) + fp32 per 256 blocks
ACT_PER_TOKEN_LAYER = 34  # x hidden bytes: one transformer layer's 16-bit activations (Korthikanti et al. 2022)
FORMULA = [
    "ESTIMATE, not a measurement (no GPU was available). Peak ~= weights + trainable states + activations:",
    "weights: LoRA = every parameter in bf16 (2 B); QLoRA = the LLM's decoder Linear weights in NF4 "
    f"(0.5 B + {NF4_CONSTANTS:.4f} B quantisation constants, double quant, blocksize 64), the rest bf16",
    "trainable states: 14 B per trainable parameter (AdamW fp32 master + m + v = 12 B, bf16 grad = 2 B)",
    "checkpointed activations: batch * seq * hidden * layers * 2 B (one bf16 hidden state kept per layer)",
    "recompute: one layer's full activations batch * seq * hidden * 34 B (SDPA/flash: no seq^2 score matrix)",
    "logits: TRL's fused LM head scores chunk by chunk, so full logits are not counted; the unfused path adds "
    "batch * seq * vocab * 6 B (bf16 logits + fp32 copy for the loss), listed as unfused_logits_gib",
    "not counted: the frozen vision tower's transient no-grad activations (~0.1 GB at batch 4), CUDA context "
    "(~0.5 GB), allocator fragmentation (often 10-20%), the QLoRA dequantisation buffer of one layer",
]


def load_config(name: str):
    return AutoConfig.for_model(**json.loads((BACKBONES / f"{name}.json").read_text()))


def build_meta(llm: str) -> MiniLlavaForConditionalGeneration:
    text = load_config(llm)
    # A stand-in placeholder id (the last row); a real build takes the tokenizer's (Qwen2.5: <|image_pad|>).
    config = MiniLlavaConfig(vision_config=load_config(VISION), text_config=text, image_token_id=text.vocab_size - 1)
    with torch.device("meta"):
        return MiniLlavaForConditionalGeneration(config)


def module_params(model) -> dict:
    """Parameters per top-level module; a tied lm_head counts 0 (its weight is the embedding's)."""
    inner, seen, out = model.model, set(), {}
    for name, module in [
        ("vision_tower", inner.vision_tower),
        ("multi_modal_projector", inner.multi_modal_projector),
        ("language_model", inner.language_model),
        ("lm_head", model.lm_head),
    ]:
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        out[name] = sum(p.numel() for p in params)
    out["total"] = sum(out.values())
    out["lm_head_tied"] = model.lm_head.weight is model.get_input_embeddings().weight
    return out


def lora_params_formula(text, r: int) -> int:
    """r * (in + out) per targeted Linear: q, k, v, o, gate, up, down in every decoder layer."""
    h, i = text.hidden_size, text.intermediate_size
    kv = text.num_key_value_heads * (h // text.num_attention_heads)
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)  # q, k + v, o, gate + up, down
    return r * per_layer * text.num_hidden_layers


def lora_params_from_modules(model, r: int, targets: list[str]) -> int:
    """The same count read off the meta model's actual Linear shapes (cross-check of the formula)."""
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in model.model.language_model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


def peft_trainable(llm: str, lora_r: int) -> int:
    """Trainable parameters of the real stage-2 plan on the meta model: recipes.builder's freezing, LoRA applied as
    SFTTrainer does (peft.get_peft_model with recipes.builder.lora_config), counted by train_plan_counts."""
    from peft import get_peft_model

    from recipes.arguments import ModelArguments
    from recipes.builder import apply_train_plan, lora_config
    from recipes.provenance import train_plan_counts

    plan = ModelArguments(lora_r=lora_r)
    model = apply_train_plan(build_meta(llm), plan)
    model = get_peft_model(model, lora_config(model, plan))
    return sum(c["trainable"] for c in train_plan_counts(model).values())


def decoder_linear_params(model) -> int:
    return sum(m.weight.numel() for m in model.model.language_model.layers.modules() if isinstance(m, torch.nn.Linear))


def estimate(model, params: dict, trainable: int, batch: int, seq: int) -> dict:
    """Peak memory estimate in GiB for LoRA (bf16) and QLoRA (NF4), following FORMULA."""
    text = model.config.text_config
    h, layers = text.hidden_size, text.num_hidden_layers
    quantized = decoder_linear_params(model)
    parts = {
        "trainable_states": trainable * ADAMW_PER_TRAINABLE,
        "checkpointed_activations": batch * seq * h * layers * BF16,
        "recompute_one_layer": batch * seq * h * ACT_PER_TOKEN_LAYER,
    }
    weights = {
        "lora": params["total"] * BF16,
        "qlora": quantized * (NF4 + NF4_CONSTANTS) + (params["total"] - quantized) * BF16,
    }
    out = {"unfused_logits_gib": batch * seq * text.vocab_size * 6 / GIB}
    for mode, w in weights.items():
        out[mode] = {
            "weights_gib": w / GIB,
            **{f"{k}_gib": v / GIB for k, v in parts.items()},
            "peak_gib": (w + sum(parts.values())) / GIB,
        }
    return out


def document_plan(model, params: dict, trainable: int, batch: int) -> dict:
    """Per document type (bench.image_tokens.IMAGES): sequence length = its image tokens + TEXT_TOKENS, single tile
    vs AnyRes (LLaVA-NeXT's pinpoints), and the stage-2 peak estimate at that length."""
    out = {}
    for setup, kwargs in {"single tile": {}, "AnyRes": {"image_grid_pinpoints": LLAVA_NEXT_PINPOINTS}}.items():
        config = MiniLlavaConfig(**{**model.config.to_dict(), **kwargs})
        for name, (height, width) in IMAGES.items():
            seq = config.count_image_tokens(height, width) + TEXT_TOKENS
            peak = estimate(model, params, trainable, batch, seq)
            out[f"{name}, {setup}"] = {
                "seq_len": seq,
                "lora_peak_gib": peak["lora"]["peak_gib"],
                "qlora_peak_gib": peak["qlora"]["peak_gib"],
            }
    return out


def plan_llm(llm: str, lora_r: int, batch: int, seq: int, cross_check: bool) -> dict:
    model = build_meta(llm)
    params = module_params(model)
    text = model.config.text_config
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = lora_params_formula(text, lora_r)
    if lora != lora_params_from_modules(model, lora_r, targets):
        raise AssertionError(f"{llm}: LoRA formula {lora:,} disagrees with the meta model's Linear shapes")
    stage1 = params["multi_modal_projector"]
    stage2 = stage1 + lora
    out = {
        "hidden_size": text.hidden_size,
        "layers": text.num_hidden_layers,
        "vocab_size": text.vocab_size,
        "image_tokens": model.config.num_image_tokens,
        "params": params,
        "trainable": {
            "stage1_projector": stage1,
            "stage2_projector_lora": stage2,
            "lora_only": lora,
            "lora_r": lora_r,
        },
        "memory_estimate_stage2": estimate(model, params, stage2, batch, seq),
        "documents_stage2": document_plan(model, params, stage2, batch),
    }
    if cross_check:
        out["trainable"]["stage2_peft_count"] = peft_trainable(llm, lora_r)
        out["trainable"]["stage2_peft_matches"] = out["trainable"]["stage2_peft_count"] == stage2
    return out


def main(argv=None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=2048, help="tokens per sample, image slots included")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--no_peft_check", action="store_true", help="skip the PEFT cross-check (imports trl, peft)")
    args = parser.parse_args(argv)
    machine = start(args)
    llms = LLMS[:1] if args.quick else LLMS
    results = {
        "vision": VISION,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "gradient_checkpointing": True,
        "dtype": "bfloat16",
        "formula": FORMULA,
        "llms": {},
    }
    for i, llm in enumerate(llms):  # PEFT on the meta model once (the smallest): the formula covers the rest
        cross_check = i == 0 and not args.no_peft_check
        results["llms"][llm] = plan_llm(llm, args.lora_r, args.batch_size, args.seq_len, cross_check)
    print_machine(machine)
    print(f"Parameters (meta device, {VISION} + each LLM):")
    rows = [
        [
            llm,
            p["params"]["vision_tower"],
            p["params"]["multi_modal_projector"],
            p["params"]["language_model"],
            "tied" if p["params"]["lm_head_tied"] else p["params"]["lm_head"],
            p["params"]["total"],
            p["trainable"]["stage1_projector"],
            p["trainable"]["stage2_projector_lora"],
        ]
        for llm, p in results["llms"].items()
    ]
    print_table(
        ["llm", "vision", "projector", "language_model", "lm_head", "total", "stage1 train", "stage2 train"],
        [[f"{c:,}" if isinstance(c, int) else c for c in row] for row in rows],
    )
    print(
        f"\nESTIMATED peak memory, stage 2 (projector + LoRA r={args.lora_r}), batch {args.batch_size}, "
        f"seq {args.seq_len}, gradient checkpointing (GiB):"
    )
    rows = []
    for llm, p in results["llms"].items():
        m = p["memory_estimate_stage2"]
        for mode in ("lora", "qlora"):
            e = m[mode]
            rows.append(
                [
                    llm,
                    mode,
                    e["weights_gib"],
                    e["trainable_states_gib"],
                    e["checkpointed_activations_gib"],
                    e["recompute_one_layer_gib"],
                    e["peak_gib"],
                    m["unfused_logits_gib"],
                ]
            )
    print_table(["llm", "mode", "weights", "trainable st.", "ckpt acts", "recompute", "PEAK", "+unfused logits"], rows)
    seq_note = f"seq = image tokens + {TEXT_TOKENS} text"
    print(f"\nESTIMATED stage-2 peak per document ({seq_note}), batch {args.batch_size} (GiB):")
    rows = [
        [llm, doc, d["seq_len"], d["lora_peak_gib"], d["qlora_peak_gib"]]
        for llm, p in results["llms"].items()
        for doc, d in p["documents_stage2"].items()
    ]
    print_table(["llm", "document, image splitting", "seq", "LoRA PEAK", "QLoRA PEAK"], rows)
    print("\n".join(["", "Formula:", *(f"  - {line}" for line in FORMULA)]))
    return finish("memory_plan", args, machine, results, FORMULA)


if __name__ == "__main__":
    main()
