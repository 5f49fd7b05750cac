"""Recipe mistakes caught before anything is loaded, naming the key: wrong-typed SFTConfig values, bare strings for
list keys, and local paths that do not exist (instead of a Hub error about repo ids)."""

import pytest

import recipes
from recipes.arguments import looks_local


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"per_device_train_batch_size": 16.5}, "'per_device_train_batch_size' must be int, got 16.5"),
        ({"num_train_epochs": [1, 2]}, "'num_train_epochs' must be float, got [1, 2]"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"lora_target_modules": "q_proj"}, "'lora_target_modules' is a list: write [q_proj]"),
    ],
)
def test_wrong_typed_values_fail_at_parse_time_naming_the_key(placeholder_recipe, changes, message):
    with pytest.raises(ValueError) as info:
        recipes.parse_recipe([placeholder_recipe(**changes)])
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["llm_name", "vision_name", "init_from"])
def test_a_missing_local_model_folder_is_named_before_anything_loads(placeholder_recipe, tmp_path, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()  # `outputs/stage1` is then a local path, not the Hub id `org/name`
    monkeypatch.setattr(recipes.builder, "load_mixture", lambda *a, **k: pytest.fail("data was loaded"))
    missing = {"llm_name": "./models/llm", "vision_name": "/nowhere/tower", "init_from": "outputs/stage1"}[key]
    backbones = {"vision_name": None, "llm_name": None} if key == "init_from" else {}  # init_from fixes them
    with pytest.raises(ValueError, match=rf"Recipe key '{key}': no such folder '{missing}'"):
        recipes.run([placeholder_recipe(**{key: missing, **backbones})])


def test_a_missing_dataset_folder_is_named(placeholder_recipe, monkeypatch):
    monkeypatch.setattr(recipes.builder, "load_mixture", lambda *a, **k: pytest.fail("data was loaded"))
    with pytest.raises(ValueError, match=r"Recipe key 'datasets\[\].path': no such folder './data/none'"):
        recipes.run([placeholder_recipe(datasets=[{"path": "./data/none"}])])


def test_hub_ids_are_not_taken_for_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_local("Qwen/Qwen2.5-1.5B-Instruct") and not looks_local("gpt2")
    assert looks_local("./gpt2") and looks_local("a/b/c") and looks_local("~/m")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"datasets": [{"path": "a", "fraction": 0.5}, {"path": "b"}]}, "'fraction' is set for some datasets but not"),
        ({"streaming": True}, "'streaming: true' is not supported"),
        ({"test_split_size": 0.1}, "'test_split_size' is not supported"),
    ],
)
def test_mixture_keys_work_as_trl_reads_them_or_are_refused(placeholder_recipe, changes, message):
    with pytest.raises(ValueError, match=message):
        recipes.parse_recipe([placeholder_recipe(**changes)])


def test_data_files_select_nothing_in_a_dataset_folder(tmp_path):
    from data_scripts.schema import load_dataset_dir

    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match=r"is a dataset folder \(save_to_disk\), so \['data_files'\] select nothing"):
        load_dataset_dir(str(tmp_path / "data"), name=None, data_files="train-*.parquet")


@pytest.mark.parametrize(
    "fractions, sizes", [((0.5, 0.5), (30, 30)), ((0.2, 0.8), (25, 100)), ((None, None), (30, 100))]
)
def test_two_datasets_mix_by_fraction_without_oversampling(placeholder_recipe, tmp_path, fractions, sizes):
    import datasets

    paths = []
    for name, n in (("a", 30), ("b", 100)):
        split = datasets.Dataset.from_dict({"id": [f"{name}-{i}" for i in range(n)]})
        datasets.DatasetDict({"train": split}).save_to_disk(str(tmp_path / name))
        paths.append(str(tmp_path / name))
    entries = [{"path": p, **({"fraction": f} if f is not None else {})} for p, f in zip(paths, fractions)]
    _, data_args, _ = recipes.parse_recipe([placeholder_recipe(datasets=entries)])
    mixed, _ = recipes.load_mixture(data_args)
    ids = mixed["id"]
    assert (sum(i.startswith("a-") for i in ids), sum(i.startswith("b-") for i in ids)) == sizes
    assert ids[: sizes[0]] == [f"a-{i}" for i in range(sizes[0])]  # the first rows of each, in order
