"""Every benchmark runs in its quick mode in process and writes a JSON with the expected keys and sane values; the
memory plan's parameter counts are exact (checked against the meta models and closed forms)."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from bench import (  # noqa: E402
    bench_generate,
    bench_gpu_train_step,
    bench_input_pipeline,
    bench_overhead,
    bench_train_step,
    memory_plan,
)
from bench.harness import interleave  # noqa: E402


def run(module, tmp_path, *extra) -> dict:
    path = tmp_path / f"{module.__name__.rsplit('.', 1)[-1]}.json"
    returned = module.main(["--quick", "--json", str(path), *extra])
    written = json.loads(path.read_text())
    assert written["benchmark"] == returned["benchmark"] and written["quick"] is True
    machine = written["machine"]
    assert {"platform_processor", "cpu_model", "cpu_count", "torch_threads", "torch", "gpu"} <= set(machine)
    if not torch.cuda.is_available():
        assert machine["gpu"] is None and "no GPU figure" in machine["gpu_note"]
    return written["results"]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_interleave_alternates_order():
    calls = []
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(t) for t in times.values()] == [3, 3]


@pytest.mark.slow
def test_train_step(tmp_path):
    r = run(bench_train_step, tmp_path)["tiny"]
    assert r["same_initial_loss"], (r["initial_loss_ours"], r["initial_loss_llava"])
    assert r["seq_len"] == r["image_tokens"] + 32 and r["image_tokens"] == 64
    for name in ("ours", "llava"):
        assert positive(r[name]["samples_per_s"]) and positive(r[name]["tokens_per_s"])
        assert r[name]["tokens_per_s"] == pytest.approx(r[name]["samples_per_s"] * r["seq_len"])
    assert positive(r["ratio_ours_over_llava_samples_per_s"])
    assert 0 < r["trainable_params"] < r["total_params"]  # the frozen tower is out


@pytest.mark.slow
def test_overhead(tmp_path):
    r = run(bench_overhead, tmp_path)["tiny"]
    for key in ("ratio_ours_over_llm_plus_vision", "ratio_ours_over_llm", "vision_share_of_ours"):
        assert positive(r[key]), key
    assert r["params"]["ours"] == r["params"]["llm"] + r["params"]["vision"] + r["params"]["projector"]


@pytest.mark.slow
def test_generate(tmp_path, backbones):
    r = run(bench_generate, tmp_path, "--backbones", os.path.dirname(backbones["llm-qwen2"]))
    assert r["outputs_identical"] is True and r["mismatched_rows"] == []
    assert r["n"] == 8 and 0 < r["mean_new_tokens"] <= r["max_new_tokens"]
    assert positive(r["ratio_batched_over_one_by_one"])
    assert positive(r["batched"]["samples_per_s"]) and positive(r["one_by_one"]["samples_per_s"])


@pytest.mark.slow
def test_input_pipeline(tmp_path, backbones):
    r = run(bench_input_pipeline, tmp_path, "--backbones", os.path.dirname(backbones["llm-qwen2"]))["tiny"]
    assert positive(r["ratio_pipeline_over_train_step"])
    assert r["ratio_pipeline_over_train_step"] == pytest.approx(
        r["collate"]["samples_per_s"] / r["train_step"]["samples_per_s"]
    )
    assert r["seq_len"] > r["image_tokens"] == 64


def test_memory_plan_counts_are_exact(tmp_path):
    r = run(memory_plan, tmp_path)
    p = r["llms"]["qwen2.5-1.5b-instruct"]
    h, v = 1536, 1152
    assert p["params"]["multi_modal_projector"] == v * h + h + h * h + h == 4_131_840
    assert p["params"]["lm_head_tied"] is True and p["params"]["lm_head"] == 0
    model = memory_plan.build_meta("qwen2.5-1.5b-instruct")
    inner = model.model
    for name, module in [("vision_tower", inner.vision_tower), ("language_model", inner.language_model)]:
        assert p["params"][name] == sum(t.numel() for t in module.parameters()), name
    assert p["params"]["total"] == sum(t.numel() for t in model.parameters())  # parameters() dedups the tied head
    # LoRA r=16 on q, k, v, o, gate, up, down of 28 layers (kv width 256, intermediate 8960), cross-checked by PEFT.
    lora = 16 * 28 * (2 * h + 2 * (h + 256) + 2 * h + 2 * (h + 8960) + (8960 + h))
    assert p["trainable"]["lora_only"] == lora
    assert p["trainable"]["stage1_projector"] == 4_131_840
    assert p["trainable"]["stage2_projector_lora"] == 4_131_840 + lora
    assert p["trainable"]["stage2_peft_matches"] is True
    est = p["memory_estimate_stage2"]
    assert 0 < est["qlora"]["peak_gib"] < est["lora"]["peak_gib"]
    assert any("ESTIMATE" in line for line in r["formula"])


def test_memory_plan_7b_untied_head():
    p = memory_plan.plan_llm("qwen2.5-7b-instruct", 16, 4, 2048, cross_check=False)
    assert p["params"]["lm_head_tied"] is False and p["params"]["lm_head"] == 152064 * 3584
    assert p["params"]["multi_modal_projector"] == 1152 * 3584 + 3584 + 3584 * 3584 + 3584


@pytest.mark.slow
def test_gpu_train_step_quick_runs_on_cpu(tmp_path):
    r = run(bench_gpu_train_step, tmp_path)
    assert r["device"] == "cpu" and r["mfu"] is None and r["peak_memory_gib"] is None
    assert positive(r["samples_per_s"]) and positive(r["tokens_per_s"])
    assert r["hardware_flops_per_step"] > r["model_flops_per_step"] > 0  # recompute of gradient checkpointing
    assert bench_gpu_train_step.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.4
    assert bench_gpu_train_step.peak_tflops("NVIDIA H100 PCIe", None) == 756.0


def test_memory_plan_sizes_each_document_by_its_image_tokens():
    from bench.image_tokens import IMAGES, LLAVA_NEXT_PINPOINTS, build_config

    p = memory_plan.plan_llm("qwen2.5-1.5b-instruct", 16, 4, 2048, cross_check=False)
    docs = p["documents_stage2"]
    anyres = build_config(projector_type="mlp2x_gelu", image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
    for name, (height, width) in IMAGES.items():
        single, split = docs[f"{name}, single tile"], docs[f"{name}, AnyRes"]
        assert single["seq_len"] == 729 + memory_plan.TEXT_TOKENS  # SigLIP-so400m's 27x27 patches, one tile
        assert split["seq_len"] == anyres.count_image_tokens(height, width) + memory_plan.TEXT_TOKENS
        assert split["lora_peak_gib"] > single["lora_peak_gib"] and split["qlora_peak_gib"] < split["lora_peak_gib"]
