"""Multi-process training on CPU: every DeepSpeed / accelerate config parses, DDP really shards the data and keeps
the ranks' weights identical, ZeRO-3 trains and saves one whole model that reloads with the trained weights."""

import gc
import json
import math
import os
import socket
import subprocess
import sys
import types

import pytest
import torch
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPSPEED_CONFIGS = {"zero2.json": 2, "zero3.json": 3, "zero3_offload.json": 3}  # file -> ZeRO stage
ACCELERATE_CONFIGS = {
    "ddp.yaml": "MULTI_GPU",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
    "fsdp.yaml": "FSDP",
}
N_ROWS, BATCH, WORLD = 48, 8, 2  # 48 rows, 8 per rank, 2 ranks: 3 optimizer steps (one rank alone would take 6)

# Each rank runs run_sft's own building blocks, then dumps what a test needs to see from inside the ranks: world
# size, the row ids this rank was fed, and its trainable weights before and after training. run_sft stays untouched.
DUMP_SCRIPT = """
import sys

import torch
from transformers import set_seed
from trl import SFTTrainer

import run_sft
from processing.collator import MiniLlavaDataCollator


class RecordIds:
    def __init__(self, collator):
        self.collator, self.ids = collator, []

    def __call__(self, rows):
        self.ids.extend(row["id"] for row in rows)
        return self.collator(rows)


model_args, data_args, args = run_sft.parse_args(sys.argv[1:])
set_seed(args.seed)  # as run_sft.main: every rank builds the same fresh projector
train_ds, _ = run_sft.load_mixture(data_args, limit=data_args.max_train_samples)
model, processor = run_sft.build_model(model_args, args)
model = run_sft.apply_train_plan(model, model_args, args.gradient_checkpointing)
init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
stop = model.generation_config.eos_token_id
collator = RecordIds(MiniLlavaDataCollator(processor, stop_token_ids=stop if isinstance(stop, list) else [stop]))
trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=processor,
                     data_collator=collator)
trainer.train()
trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
dump = {"world_size": args.world_size, "parallel_mode": args.parallel_mode.value, "ids": collator.ids,
        "global_step": trainer.state.global_step, "init": init, "trained": trained}
torch.save(dump, f"{args.output_dir}/rank{args.process_index}.pt")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], tmp_path, deepspeed: bool = False, timeout: int = 600) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # 2 ranks on 2 cores: more threads only thrash
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path even on a GPU machine
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    if deepspeed:
        env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    (tmp_path / "launch.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-6000:]}"


def write_recipe(tmp_path, name: str, **values) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="module")
def tiny_run(backbones, tmp_path_factory):
    """The synthetic set (n=64) and a saved tiny MiniLlava (ZeRO-3 starts from a saved model: init_from)."""
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
        "datasets": [{"path": str(root / "synthetic"), "split": "train"}],
        "max_train_samples": N_ROWS,
        # Frozen tower (as in the real recipes): SigLIP's post_layernorm lies outside hidden_states[-1] and would
        # get no gradient, which DDP with ddp_find_unused_parameters=false rejects at step 2.
        "train_projector": True,
        "train_vision": False,
        "llm_full": True,
        "use_cpu": True,  # without it each torchrun process trains alone, silently
        "bf16": False,
        "gradient_checkpointing": False,
        "ddp_find_unused_parameters": False,
        "per_device_train_batch_size": BATCH,
        "num_train_epochs": 1,
        "learning_rate": 1.0e-3,
        "logging_steps": 1,
        "eval_strategy": "no",
        "seed": 0,
        "dataloader_num_workers": 0,
        "report_to": "none",
    }
    return types.SimpleNamespace(root=root, vision=vision, llm=llm, init=str(root / "init"), common=common)


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
        path, tmp_path, per_device_train_batch_size=3, gradient_accumulation_steps=5, max_grad_norm=0.5,
        learning_rate=3e-4,
    )  # fmt: skip
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
    import run_sft

    recipe = write_recipe(
        tmp_path, "z3.yaml", **tiny_run.common, vision_name=tiny_run.vision, llm_name=tiny_run.llm,
        output_dir=str(tmp_path / "out"), deepspeed=os.path.join(REPO, "recipes", "deepspeed", "zero3.json"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="ZeRO-3 needs `init_from`"):
        run_sft.parse_args([recipe])


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
    if config.fsdp_config:
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert set(config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")) == {
            "Qwen2DecoderLayer",
            "SiglipEncoderLayer",
        }
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_fsdp_wrap_classes_exist_in_the_model(build):
    """The class names fsdp.yaml wraps are the real block classes of the Qwen2 + SigLIP model."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(REPO, "recipes", "accelerate", "fsdp.yaml"))
    model, _ = build(vision="siglip", llm="qwen2")
    classes = {type(m).__name__ for m in model.modules()}
    assert set(config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")) <= classes


# --- real multi-process runs -------------------------------------------------------------------------------------


def test_ddp_two_processes_shard_data_and_sync_gradients(tiny_run, tmp_path):
    """accelerate launch (STACK.md's CPU line), gloo, 2 ranks."""
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "train_and_dump.py"
    script.write_text(DUMP_SCRIPT)
    recipe = write_recipe(tmp_path, "ddp.yaml", **tiny_run.common, vision_name=tiny_run.vision,
                          llm_name=tiny_run.llm, output_dir=str(out), save_strategy="no")  # fmt: skip
    launch(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(WORLD),
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), str(script), recipe],
        tmp_path,
    )  # fmt: skip
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    for dump in ranks:
        assert dump["world_size"] == WORLD and dump["parallel_mode"] == "distributed"
        assert dump["global_step"] == math.ceil(N_ROWS / (WORLD * BATCH)) == 3  # a lone rank would take 6
    ids0, ids1 = set(ranks[0]["ids"]), set(ranks[1]["ids"])
    assert len(ids0) == len(ids1) == N_ROWS // WORLD and not ids0 & ids1  # each rank its own half of the data
    assert ranks[0]["trained"].keys() == ranks[1]["trained"].keys()
    names = list(ranks[0]["trained"])
    assert any(n.startswith("model.multi_modal_projector.") for n in names)
    assert any(n.startswith("model.language_model.") for n in names)
    for name in names:  # different data, identical weights: the gradients were all-reduced every step
        assert torch.equal(ranks[0]["init"][name], ranks[1]["init"][name]), name
        assert torch.equal(ranks[0]["trained"][name], ranks[1]["trained"][name]), name
    changed = [n for n in names if not torch.equal(ranks[0]["init"][n], ranks[0]["trained"][n])]
    assert len(changed) == len(names), f"not trained: {set(names) - set(changed)}"


def logits_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_deepspeed_zero3_trains_and_saves_a_whole_model(tiny_run, tmp_path):
    """torchrun + run_sft.py itself under ZeRO-3 (DS_ACCELERATOR=cpu): the saved model is the trained one, whole."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from data_scripts.schema import load_dataset_dir
    from modeling_minillava import MiniLlavaForConditionalGeneration
    from processing import MiniLlavaProcessor
    from processing.collator import MiniLlavaDataCollator

    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path, "zero3.yaml", **tiny_run.common, init_from=tiny_run.init, output_dir=str(out),
        save_strategy="epoch", deepspeed=os.path.join(REPO, "recipes", "deepspeed", "zero3.json"),
    )  # fmt: skip
    launch(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
         str(free_port()), "run_sft.py", recipe],
        tmp_path, deepspeed=True,
    )  # fmt: skip
    steps = math.ceil(N_ROWS / (WORLD * BATCH))
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == steps and all(math.isfinite(loss) for _, loss in results["losses"])
    checkpoint = out / f"checkpoint-{steps}"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == steps
    assert (checkpoint / "CHECKPOINT_COMPLETE").exists()

    model, info = MiniLlavaForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched key: the save was whole
    # The saved weights are exactly the fp32 master weights DeepSpeed sharded across the 2 ranks (consolidated from
    # the checkpoint's ZeRO shards), frozen ones included.
    master = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    state = model.state_dict()
    assert set(master) == set(state)
    for name, value in master.items():
        assert torch.equal(state[name], value), name
    init = MiniLlavaForConditionalGeneration.from_pretrained(tiny_run.init).state_dict()
    for name, value in state.items():
        frozen = name.startswith("model.vision_tower.")
        assert torch.equal(value, init[name]) == frozen, f"{name}: {'changed' if frozen else 'not trained'}"

    # The last checkpoint (loaded through the remote code it carries) and output_dir are the same model.
    from_checkpoint = AutoModelForImageTextToText.from_pretrained(str(checkpoint), trust_remote_code=True)
    processor = MiniLlavaProcessor.from_pretrained(str(out))
    stop = model.generation_config.eos_token_id
    collator = MiniLlavaDataCollator(processor, stop_token_ids=stop if isinstance(stop, list) else [stop])
    batch = collator(list(load_dataset_dir(str(tiny_run.root / "synthetic"))["validation"].select(range(2))))
    logits = logits_of(model, batch)
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, logits_of(from_checkpoint, batch))
    untrained = MiniLlavaForConditionalGeneration.from_pretrained(tiny_run.init)
    assert not torch.allclose(logits, logits_of(untrained, batch))
    # The file itself holds full-size tensors (not the empty ZeRO-3 placeholders).
    assert all(t.numel() > 0 for t in load_file(str(out / "model.safetensors")).values())
