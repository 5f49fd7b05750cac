"""Shared, session-scoped fixtures: the tiny local backbones and a model/processor builder (all offline)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")  # tests that want MLflow opt in explicitly

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, str]:
    """{"vision-siglip", "vision-clip", "llm-qwen2", "llm-llama"} -> local HF folders (built once per session)."""
    from data_scripts.make_tiny_backbones import make_tiny_backbones

    return make_tiny_backbones(str(tmp_path_factory.mktemp("tiny_backbones")))


@pytest.fixture(scope="session")
def build(backbones):
    """build(vision="siglip", llm="qwen2", seed=0, **config_kwargs) -> (model, processor), model in eval mode."""
    from modeling_minillava import MiniLlavaForConditionalGeneration
    from processing import MiniLlavaProcessor

    def _build(vision: str = "siglip", llm: str = "qwen2", seed: int = 0, **config_kwargs):
        v, t = backbones[f"vision-{vision}"], backbones[f"llm-{llm}"]
        torch.manual_seed(seed)
        model = MiniLlavaForConditionalGeneration.from_backbones(v, t, **config_kwargs).eval()
        processor = MiniLlavaProcessor.from_backbones(v, t, config=model.config)
        return model, processor

    return _build


@pytest.fixture(scope="session")
def save_quiet_model(build):
    """save_quiet_model(folder) -> folder: the tiny Qwen2 model + processor saved there, its "\n" logit zeroed (the
    random tiny LM says "\n" to everything), so answers show visible tokens."""

    def _save(folder) -> str:
        model, processor = build(seed=0)
        (newline,) = processor.tokenizer("\n", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            model.get_output_embeddings().weight[newline] = 0
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        return str(folder)

    return _save


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> str:
    """The synthetic doc/UI set (make_synthetic, n=200, seed 0), built once per session for every module that only
    reads it (train / validation / test splits + manifest.json). Modules that need another size or damage rows build
    their own."""
    from data_scripts.make_synthetic import build_synthetic

    out = str(tmp_path_factory.mktemp("synthetic_set") / "synthetic")
    build_synthetic(out, n=200, seed=0)
    return out


@pytest.fixture
def placeholder_recipe(tmp_path):
    """placeholder_recipe(**changes) -> path of a recipe YAML whose models and data are placeholder names (v, l, d),
    for checks that fail before anything loads; a change to None drops the key."""
    import yaml

    def _write(**changes) -> str:
        values = {
            "vision_name": "v",
            "llm_name": "l",
            "datasets": [{"path": "d"}],
            "output_dir": str(tmp_path / "o"),
            "use_cpu": True,
            "bf16": False,
            **changes,
        }
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in values.items() if v is not None}))
        return str(path)

    return _write


@pytest.fixture
def fresh_python(tmp_path):
    """fresh_python(code, *argv, cwd=None, timeout=None, **env) -> CompletedProcess: `python -c code argv` in a new
    process that cannot import this repo (no PYTHONPATH, run from a folder outside it: tmp_path/elsewhere unless
    `cwd`), offline, with its own remote-code module cache; the test fails with the child's stderr if it fails."""
    import subprocess
    import sys

    def _run(code: str, *argv, cwd=None, timeout=None, **env):
        workdir = cwd or tmp_path / "elsewhere"
        os.makedirs(workdir, exist_ok=True)
        child_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        child_env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"), **env)
        proc = subprocess.run(
            [sys.executable, "-c", code, *map(str, argv)],
            cwd=workdir,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    return _run


@pytest.fixture
def one_step_trainer(tmp_path):
    """one_step_trainer(model, processor, collator, rows) -> SFTTrainer: one optimizer step over all `rows` in one
    batch with our collator, on CPU in float32, logging that step's loss, saving nothing (as run_sft configures TRL:
    raw columns kept, TRL's own dataset preparation skipped)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    def _build(model, processor, collator, rows: list[dict]) -> SFTTrainer:
        args = SFTConfig(
            output_dir=str(tmp_path / "run"),
            per_device_train_batch_size=len(rows),
            max_steps=1,
            learning_rate=1e-3,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            report_to="none",
            save_strategy="no",
            dataloader_num_workers=0,
            logging_steps=1,
            seed=0,
            max_length=None,
            remove_unused_columns=False,
            dataset_kwargs={"skip_prepare_dataset": True},
        )
        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=processor,
            data_collator=collator,
        )

    return _build


def pytest_collection_modifyitems(items):
    """Tests marked distributed, browser, network or serving are slow too: `-m "not slow"` alone is the fast loop."""
    for item in items:
        if any(item.get_closest_marker(name) for name in ("distributed", "browser", "network", "serving")):
            item.add_marker(pytest.mark.slow)
