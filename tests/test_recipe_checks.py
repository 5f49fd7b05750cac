"""Recipe mistakes caught before anything is loaded, naming the key: wrong-typed SFTConfig values, bare strings for
list keys, and local paths that do not exist (instead of a Hub error about repo ids)."""

import pytest
import yaml

import run_sft


def recipe(tmp_path, **changes) -> str:
    values = {"vision_name": "v", "llm_name": "l", "datasets": [{"path": "d"}], "output_dir": str(tmp_path / "o"),
              "use_cpu": True, "bf16": False, **changes}  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"per_device_train_batch_size": 16.5}, "'per_device_train_batch_size' must be int, got 16.5"),
        ({"num_train_epochs": [1, 2]}, "'num_train_epochs' must be float, got [1, 2]"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"lora_target_modules": "q_proj"}, "'lora_target_modules' is a list: write [q_proj]"),
    ],
)
def test_wrong_typed_values_fail_at_parse_time_naming_the_key(tmp_path, changes, message):
    with pytest.raises(ValueError) as info:
        run_sft.parse_args([recipe(tmp_path, **changes)])
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["llm_name", "vision_name", "init_from"])
def test_a_missing_local_model_folder_is_named_before_anything_loads(tmp_path, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()  # `outputs/stage1` is then a local path, not the Hub id `org/name`
    monkeypatch.setattr(run_sft, "load_mixture", lambda *a, **k: pytest.fail("data was loaded"))
    missing = {"llm_name": "./models/llm", "vision_name": "/nowhere/tower", "init_from": "outputs/stage1"}[key]
    with pytest.raises(ValueError, match=rf"Recipe key '{key}': no such folder '{missing}'"):
        run_sft.main([recipe(tmp_path, **{key: missing})])


def test_a_missing_dataset_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(run_sft, "load_mixture", lambda *a, **k: pytest.fail("data was loaded"))
    with pytest.raises(ValueError, match=r"Recipe key 'datasets\[\].path': no such folder './data/none'"):
        run_sft.main([recipe(tmp_path, datasets=[{"path": "./data/none"}])])


def test_hub_ids_are_not_taken_for_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not run_sft.looks_local("Qwen/Qwen2.5-1.5B-Instruct") and not run_sft.looks_local("gpt2")
    assert run_sft.looks_local("./gpt2") and run_sft.looks_local("a/b/c") and run_sft.looks_local("~/m")
