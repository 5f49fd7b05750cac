"""Multi-process CPU training through the real entry point (`accelerate launch --config_file recipes/accelerate/X.yaml
run_sft.py recipe.yaml`): DDP and ZeRO-3 shard the data and reach the single-process weights, ZeRO-3 saves one whole
model; the DeepSpeed / accelerate configs parse, fsdp.yaml builds accelerate's FSDP plugin (on CPU it runs as DDP)."""

import gc
import json
import math
import os
import socket
import subprocess
import sys
import time
import types

import pytest
import torch
import yaml

import recipes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPSPEED_CONFIGS = {"zero2.json": 2, "zero3.json": 3, "zero3_offload.json": 3}  # file -> ZeRO stage
ACCELERATE_CONFIGS = {
    "ddp.yaml": "MULTI_GPU",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
    "fsdp.yaml": "FSDP",
}
N_ROWS, BATCH, WORLD = 48, 8, 2  # 48 rows, 8 per rank, 2 ranks: 3 optimizer steps (one rank alone would take 6)
STEPS = math.ceil(N_ROWS / (WORLD * BATCH))
# Saved weights of a 2-rank run vs the single-process run with the same effective batch (2 x 8 rows vs 16): the runs
# differ only in the order float32 sums are taken (two partial batch sums all-reduced vs one sum), ~1e-7 relative per
# gradient. The recipe uses plain SGD so that this stays ~1e-7 in the weights (measured: at most 1.2e-7, one ULP of a
# weight near 1): Adam moves every weight by about +-lr whatever its gradient's size, so a near-zero gradient whose
# sign flips with the summation order would move a weight by 2 lr. WEIGHT_RTOL/ATOL leave ~10x headroom for other
# CPUs' summation orders, and every trained tensor must move by more than 100 x WEIGHT_ATOL, so a rank that trained
# on its half alone (its gradient is off by the size of the gradient itself) fails.
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log, processes: int = WORLD, config: str | None = None) -> float:
    """`accelerate launch --config_file recipes/accelerate/<config> --num_processes N run_sft.py ARGS` (plain
    `python run_sft.py ARGS` when config is None), the log written to `log`; returns the wall time in seconds."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # 2 ranks on 2 cores: more threads only thrash
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path even on a GPU machine
        "DS_ACCELERATOR": "cpu",  # DeepSpeed's CPU accelerator (it would probe CUDA otherwise)
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [sys.executable, "run_sft.py", *args]
    if config is not None:  # --mixed_precision no: the configs say bf16 for GPUs; these runs compare fp32 weights
        cmd[1:1] = [
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            f"recipes/accelerate/{config}",
            "--num_processes",
            str(processes),
            "--mixed_precision",
            "no",
            "--main_process_port",
            str(free_port()),
        ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return time.perf_counter() - start


def write_recipe(tmp_path, name: str, **values) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="module")
def tiny_run(backbones, tmp_path_factory):
    """The synthetic set (n=64), a saved tiny MiniLlava every run starts from (`init_from`: ZeRO-3 needs one, and all
    runs then start from the same weights) and the recipe they share."""
    from data_scripts.make_synthetic import build_synthetic
    from modeling_minillava import MiniLlavaForConditionalGeneration
    from processing import MiniLlavaProcessor

    root = tmp_path_factory.mktemp("distributed")
    build_synthetic(str(root / "synthetic"), n=64, seed=0, num_proc=1)
    vision, llm = backbones["vision-siglip"], backbones["llm-qwen2"]
    torch.manual_seed(0)
    model = MiniLlavaForConditionalGeneration.from_backbones(vision, llm)
    model.save_pretrained(root / "init")
    MiniLlavaProcessor.from_backbones(vision, llm, config=model.config).save_pretrained(root / "init")
    common = {
        "init_from": str(root / "init"),
        "datasets": [{"path": str(root / "synthetic"), "split": "train"}],
        "max_train_samples": N_ROWS,
        # Frozen tower (as in the real recipes): SigLIP's post_layernorm lies outside hidden_states[-1] and would
        # get no gradient, which DDP with ddp_find_unused_parameters=false rejects at step 2.
        "train_projector": True,
        "train_vision": False,
        "llm_full": True,
        "use_cpu": True,  # without it each process trains alone, silently
        "bf16": False,
        "gradient_checkpointing": False,
        "ddp_find_unused_parameters": False,
        "per_device_train_batch_size": BATCH,
        "num_train_epochs": 1,
        "optim": "sgd",  # see WEIGHT_RTOL
        "learning_rate": 1.0,  # SGD on a tiny model: every trained tensor moves by >= 1e-4 in 3 steps
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "epoch",  # checkpoint-3 holds each rank's counters
        "seed": 0,
        "dataloader_num_workers": 0,
        "report_to": "none",
    }
    return types.SimpleNamespace(root=root, vision=vision, llm=llm, init=str(root / "init"), common=common)


@pytest.fixture(scope="module")
def single_run(tiny_run, tmp_path_factory):
    """The reference: one process, batch WORLD x BATCH (the effective batch of the 2-rank runs), same recipe."""
    out = tmp_path_factory.mktemp("single") / "out"
    recipe = write_recipe(out.parent, "single.yaml", **tiny_run.common, output_dir=str(out))
    seconds = launch([recipe, "--per_device_train_batch_size", str(WORLD * BATCH)], out.parent / "launch.log", 1)
    print(f"single-process run: {seconds:.1f} s")
    return run_outputs(out, ranks=1)


def run_outputs(out, ranks: int) -> types.SimpleNamespace:
    """What a run wrote: its summary, run_info, saved model (its state dict) and each rank's counters in its last
    checkpoint."""
    from modeling_minillava import MiniLlavaForConditionalGeneration

    checkpoint = out / f"checkpoint-{STEPS}"
    counters = [json.loads((checkpoint / f"run_counters_rank{r}.json").read_text()) for r in range(ranks)]
    assert not (checkpoint / f"run_counters_rank{ranks}.json").exists()  # no more processes than launched
    # One main process: the train plan and the artefacts line are printed once (two processes that each trained
    # alone would both believe they are the main one).
    log = (out.parent / "launch.log").read_text()
    assert log.count("Train plan:") == 1 and log.count(f"Artefacts in {out}") == 1, log[-3000:]
    # Compared as loaded: a ZeRO-3 save names the keys in the backbones' own layout (model.language_model.model.*),
    # a plain save in ours (model.language_model.*); from_pretrained maps both onto the same parameters.
    model, info = MiniLlavaForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched key: the save was whole
    return types.SimpleNamespace(
        out=out,
        checkpoint=checkpoint,
        results=json.loads((out / "train_results.json").read_text()),
        run_info=json.loads((out / "run_info.json").read_text()),
        model=model,
        weights=model.state_dict(),
        counters=counters,
    )


# --- configs parse (in-process, no launch) ----------------------------------------------------------------------


@pytest.fixture
def no_leftover_deepspeed():
    """A DeepSpeed SFTConfig registers a global weakref that turns on zero.Init in every later from_pretrained of this
    process; make sure it is gone after each test."""
    yield
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    gc.collect()
    unset_hf_deepspeed_config()
    assert not is_deepspeed_zero3_enabled()


def parse_deepspeed(path: str, tmp_path, **kwargs):
    """SFTConfig fills the "auto" values (as the Trainer does), finalize fills the model-size ones, then DeepSpeed's
    own config class validates the result (unknown keys, stage, batch arithmetic)."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from trl import SFTConfig

    args = SFTConfig(output_dir=str(tmp_path), deepspeed=path, use_cpu=True, bf16=False, report_to="none", **kwargs)
    model = types.SimpleNamespace(config=types.SimpleNamespace(text_config=types.SimpleNamespace(hidden_size=96)))
    args.hf_deepspeed_config.trainer_config_finalize(args, model, num_training_steps=10)
    config = args.hf_deepspeed_config.config
    DeepSpeedConfig(config)
    return args, config


def autos(node) -> list:
    if isinstance(node, dict):
        return [a for v in node.values() for a in autos(v)]
    return ["auto"] if node == "auto" else []


@pytest.mark.parametrize("name", sorted(DEEPSPEED_CONFIGS))
def test_deepspeed_config_fills_autos_and_validates(name, tmp_path, no_leftover_deepspeed):
    path = os.path.join(REPO, "recipes", "deepspeed", name)
    with open(path) as f:
        raw = json.load(f)
    assert raw["zero_allow_untested_optimizer"] is True
    args, config = parse_deepspeed(
        path,
        tmp_path,
        per_device_train_batch_size=3,
        gradient_accumulation_steps=5,
        max_grad_norm=0.5,
        learning_rate=3e-4,
    )
    assert not autos(config), f"{name}: 'auto' left unfilled: {config}"
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 5
    assert config["train_batch_size"] == 3 * 5 * args.world_size
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False
    assert args.hf_deepspeed_config.get_value("zero_optimization.stage") == DEEPSPEED_CONFIGS[name]
    assert args.hf_deepspeed_config.is_zero3() == (DEEPSPEED_CONFIGS[name] == 3)
    if DEEPSPEED_CONFIGS[name] == 3:  # save_model gathers the shards into one whole model
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    if "offload" in name:  # DeepSpeed's CPU Adam, with the Trainer's hyperparameters
        assert args.hf_deepspeed_config.is_offload()
        assert config["optimizer"]["params"]["lr"] == 3e-4
    else:  # the Trainer's AdamW
        assert "optimizer" not in raw


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c["zero_optimization"].update(stage=4), "stage"),
        (lambda c: c["zero_optimization"].update(stage3_gather_16bit_weights_on_save=True), "Extra inputs"),
        (lambda c: c.update(train_micro_batch_size_per_gpu=4), "per_device_train_batch_size"),
    ],
    ids=["unknown-stage", "misspelt-key", "hardcoded-mismatch"],
)
def test_bad_deepspeed_config_fails_with_a_clear_error(edit, match, tmp_path, no_leftover_deepspeed):
    with open(os.path.join(REPO, "recipes", "deepspeed", "zero3.json")) as f:
        config = json.load(f)
    edit(config)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):  # pydantic's ValidationError is a ValueError
        parse_deepspeed(str(path), tmp_path, per_device_train_batch_size=8)


def test_broken_or_missing_deepspeed_json_fails(tmp_path, no_leftover_deepspeed):
    from trl import SFTConfig

    (tmp_path / "broken.json").write_text('{"zero_optimization": {"stage": 3,}}')
    with pytest.raises(json.JSONDecodeError):
        SFTConfig(output_dir=str(tmp_path), deepspeed=str(tmp_path / "broken.json"), use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="existing deepspeed config"):
        SFTConfig(output_dir=str(tmp_path), deepspeed=str(tmp_path / "missing.json"), use_cpu=True, bf16=False)


def test_zero3_without_init_from_is_refused_at_parse_time(tiny_run, tmp_path, no_leftover_deepspeed):
    recipe = {k: v for k, v in tiny_run.common.items() if k != "init_from"}
    recipe = write_recipe(
        tmp_path,
        "z3.yaml",
        **recipe,
        vision_name=tiny_run.vision,
        llm_name=tiny_run.llm,
        output_dir=str(tmp_path / "out"),
        deepspeed=os.path.join(REPO, "recipes", "deepspeed", "zero3.json"),
    )
    with pytest.raises(ValueError, match="ZeRO-3 needs `init_from`"):
        recipes.parse_recipe([recipe])  # refused while parsing the recipe: nothing is loaded or written
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_config_loads(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(os.path.join(REPO, "recipes", "accelerate", name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == ACCELERATE_CONFIGS[name]
    assert config.num_processes == 8 and config.num_machines == 1 and not config.use_cpu
    if config.deepspeed_config:  # the JSON it names exists, relative to the repo root (the launch directory)
        ds_file = config.deepspeed_config["deepspeed_config_file"]
        stage = DEEPSPEED_CONFIGS[os.path.basename(ds_file)]
        assert os.path.isfile(os.path.join(REPO, ds_file))
        assert config.deepspeed_config["zero3_init_flag"] == (stage == 3)


def fsdp_plugin(monkeypatch, *flags: str, config: str = "recipes/accelerate/fsdp.yaml"):
    """accelerate's FSDP plugin exactly as `accelerate launch --config_file <config>` hands it to each process: the
    launcher's own parser and environment (FSDP_* variables), read back by FullyShardedDataParallelPlugin()."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    argv = ["--config_file", config, "--num_processes", str(WORLD), "--mixed_precision", "no", *flags, "run_sft.py"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert args.use_fsdp
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    return FullyShardedDataParallelPlugin()


def test_fsdp_config_builds_the_plugin_that_wraps_our_blocks(monkeypatch, build):
    """fsdp.yaml -> the plugin accelerate would use: FSDP2, full state dict, and a wrap policy whose class names
    resolve to the real block classes of the Qwen2 + SigLIP model (accelerate's own lookup)."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

    monkeypatch.chdir(REPO)
    plugin = fsdp_plugin(monkeypatch)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # save_model writes one whole model
    assert not plugin.cpu_ram_efficient_loading and not plugin.activation_checkpointing
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    model, _ = build(vision="siglip", llm="qwen2")
    plugin.set_auto_wrap_policy(model)
    wrapped = plugin.auto_wrap_policy.keywords["transformer_layer_cls"]
    assert wrapped == {Qwen2DecoderLayer, SiglipEncoderLayer}
    blocks = [m for m in model.modules() if isinstance(m, tuple(wrapped))]
    assert len(blocks) == model.config.text_config.num_hidden_layers + model.config.vision_config.num_hidden_layers


def test_fsdp_config_naming_a_missing_block_class_fails(monkeypatch, build):
    """fsdp.yaml with another backbone (Llama + CLIP: LlamaDecoderLayer, CLIPEncoderLayer) is refused, naming the
    class, rather than wrapped wrongly."""
    monkeypatch.chdir(REPO)
    plugin = fsdp_plugin(monkeypatch)
    model, _ = build(vision="clip", llm="llama")
    with pytest.raises(ValueError, match="Could not find the transformer layer class Qwen2DecoderLayer"):
        plugin.set_auto_wrap_policy(model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP1 finds its device here on a GPU machine")
def test_fsdp1_without_an_accelerator_fails_building_the_plugin(monkeypatch):
    """FSDP1 (`--fsdp_version 1`) on a CPU-only machine stops at once: the plugin wants a device for
    sync_module_states (accelerate/utils/dataclasses.py, FullyShardedDataParallelPlugin.__post_init__)."""
    monkeypatch.chdir(REPO)
    with pytest.raises(RuntimeError, match="no available devices found, must be one of 'XPU', 'CUDA'"):
        fsdp_plugin(monkeypatch, "--fsdp_version", "1")


def test_fsdp_yaml_on_cpu_is_refused_at_parse_time(tiny_run, monkeypatch, tmp_path):
    """accelerate 1.15 switches to FSDP only for GPU-like distributed types (MULTI_GPU, MULTI_XPU, ...); `use_cpu:
    true` makes the run MULTI_CPU (gloo) and drops the FSDP plugin without a word, so fsdp.yaml on CPU would train as
    plain DDP (measured: optimizer.pt, no FSDP files, weights equal to DDP's). run_sft refuses it instead, with the
    environment `accelerate launch --config_file recipes/accelerate/fsdp.yaml` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    monkeypatch.chdir(REPO)
    argv = ["--config_file", "recipes/accelerate/fsdp.yaml", "--num_processes", str(WORLD), "run_sft.py"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    for key, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, "fsdp.yaml", **tiny_run.common, output_dir=str(out))
    with pytest.raises(ValueError, match="FSDP with `use_cpu: true`.*plain DDP"):
        recipes.parse_recipe([recipe])
    assert not out.exists()


# --- real multi-process runs of run_sft.py ----------------------------------------------------------------------


def assert_sharded_like_single(run, single, init_weights) -> None:
    """The 2-rank run trained on the data split in halves, and its saved weights are the single-process run's."""
    assert run.run_info["world_size"] == WORLD and single.run_info["world_size"] == 1
    assert run.results["global_step"] == single.results["global_step"] == STEPS  # a rank alone: 2 x STEPS
    for counters in run.counters:  # each rank's collator saw its half of the rows, once
        assert counters["global_step"] == STEPS
        assert counters["collator"]["seen"] == counters["collator"]["kept"] == N_ROWS // WORLD
    assert single.counters[0]["collator"]["seen"] == N_ROWS
    # TRL's token count is gathered over the ranks: the two halves together hold exactly the tokens of all 48 rows
    # (two ranks fed the same half would count that half twice).
    assert run.results["num_tokens"] == run.counters[0]["num_tokens"] == single.results["num_tokens"]
    # The logged loss is the mean over both ranks' tokens, step by step: the single run's (float32 rounding).
    assert [s for s, _ in run.results["losses"]] == [s for s, _ in single.results["losses"]] == list(range(1, 4))
    for (_, got), (_, want) in zip(run.results["losses"], single.results["losses"]):
        assert got == pytest.approx(want, rel=1e-6)
    assert run.weights.keys() == single.weights.keys() == init_weights.keys()
    for name, want in single.weights.items():
        if name.startswith("model.vision_tower."):  # frozen: bit for bit the starting weights in both runs
            assert torch.equal(run.weights[name], init_weights[name]) and torch.equal(want, init_weights[name]), name
            continue
        moved = (want - init_weights[name]).abs().max().item()
        assert moved > 100 * WEIGHT_ATOL, f"{name} barely trained ({moved:.2e}): the comparison proves nothing"
        torch.testing.assert_close(run.weights[name], want, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, msg=name)


@pytest.fixture(scope="module")
def init_weights(tiny_run):
    from modeling_minillava import MiniLlavaForConditionalGeneration

    return MiniLlavaForConditionalGeneration.from_pretrained(tiny_run.init).state_dict()


@pytest.mark.distributed
def test_ddp_shards_data_and_matches_a_single_process(tiny_run, single_run, init_weights, tmp_path):
    """recipes/accelerate/ddp.yaml on 2 CPU processes (gloo; accelerate picks MULTI_CPU from the recipe's use_cpu)."""
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, "ddp.yaml", **tiny_run.common, output_dir=str(out))
    seconds = launch([recipe], tmp_path / "launch.log", config="ddp.yaml")
    print(f"DDP run: {seconds:.1f} s")
    run = run_outputs(out, ranks=WORLD)
    assert_sharded_like_single(run, single_run, init_weights)
    assert (run.checkpoint / "optimizer.pt").exists()  # the plain Trainer's optimizer file (one copy, rank 0)


def logits_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.distributed
def test_deepspeed_zero3_shards_data_and_saves_a_whole_model(tiny_run, single_run, init_weights, tmp_path):
    """recipes/accelerate/deepspeed_zero3.yaml (ZeRO-3, recipes/deepspeed/zero3.json) on 2 CPU processes: the
    single-process result, saved as one whole model that reloads with the trained weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForImageTextToText

    from data_scripts.schema import load_dataset_dir
    from modeling_minillava import MiniLlavaForConditionalGeneration
    from processing import MiniLlavaProcessor
    from processing.collator import MiniLlavaDataCollator

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, "zero3.yaml", **tiny_run.common, output_dir=str(out))
    seconds = launch([recipe], tmp_path / "launch.log", config="deepspeed_zero3.yaml")
    print(f"ZeRO-3 run: {seconds:.1f} s")
    run = run_outputs(out, ranks=WORLD)
    assert_sharded_like_single(run, single_run, init_weights)
    # DeepSpeed's own checkpoint: the weights really were partitioned (one fp32 shard per rank), and the model
    # save_model wrote is exactly those master weights gathered, frozen ones included.
    shards = sorted(p.name for p in (run.checkpoint / f"global_step{STEPS}").iterdir() if "optim_states" in p.name)
    assert len(shards) == WORLD, shards
    master = get_fp32_state_dict_from_zero_checkpoint(str(run.checkpoint))
    assert set(master) == set(run.weights)
    for name, value in master.items():
        assert torch.equal(run.weights[name], value), name

    model = run.model
    # The last checkpoint (through the remote code it carries) and output_dir are the same, trained model.
    from_checkpoint = AutoModelForImageTextToText.from_pretrained(str(run.checkpoint), trust_remote_code=True)
    processor = MiniLlavaProcessor.from_pretrained(str(out))
    stop = model.generation_config.eos_token_id
    collator = MiniLlavaDataCollator(processor, stop_token_ids=stop if isinstance(stop, list) else [stop])
    batch = collator(list(load_dataset_dir(str(tiny_run.root / "synthetic"))["validation"].select(range(2))))
    logits = logits_of(model, batch)
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, logits_of(from_checkpoint, batch))
    assert not torch.allclose(
        logits, logits_of(MiniLlavaForConditionalGeneration.from_pretrained(tiny_run.init), batch)
    )
