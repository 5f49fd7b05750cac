"""Recipes compose: files merge left to right (mappings key by key, lists replaced), flags win; every overlay is run
the way its own header says, changes exactly its own keys, and the resolved recipe parses back to the same run."""

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

import recipes
from recipes.arguments import merge_recipes, resolved_recipe

ROOT = Path(__file__).resolve().parents[1]
ON_CPU = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
ALL = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
COMMAND = re.compile(r"^#\s+(?:accelerate launch |python )?run_sft\.py (.+)$", re.MULTILINE)


def documented_command(recipe: str) -> list[str] | None:
    """The recipe files of the `run_sft.py ...` line in an overlay's header comment (None for a whole recipe)."""
    match = COMMAND.search((ROOT / recipe).read_text())
    return shlex.split(match[1]) if match else None


OVERLAYS = [r for r in ALL if documented_command(r)]
WHOLE = [r for r in ALL if r not in OVERLAYS]


def as_dict(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)


def parse(files: list[str], tmp_path, *flags: str):
    paths = []
    for name in files:
        text = (ROOT / name).read_text()
        path = ROOT / name
        if "OUT_DIR" in text:  # smoke recipes: scripts/smoke.sh fills in the folder
            path = tmp_path / Path(name).name
            path.write_text(text.replace("OUT_DIR", str(tmp_path)))
        paths.append(str(path))
    return recipes.parse_recipe([*paths, *ON_CPU, *flags])


def differing(a, b) -> set[str]:
    out = set()
    for x, y in zip(a, b):
        dx, dy = as_dict(x), as_dict(y)
        out |= {k for k in dx if dx[k] != dy[k]}
    return out


def test_the_recipe_folder_has_whole_recipes_and_overlays():
    assert {"recipes/stage1.yaml", "recipes/stage2.yaml", "recipes/smoke/stage1.yaml"} <= set(WHOLE)
    assert {"recipes/stage1_7b.yaml", "recipes/stage2_7b_qlora.yaml", "recipes/stage3/lora_r8.yaml"} <= set(OVERLAYS)
    assert all(len((ROOT / r).read_text().splitlines()) <= 12 for r in OVERLAYS)  # a few lines, not copies


@pytest.mark.parametrize("recipe", WHOLE)
def test_every_whole_recipe_parses_with_its_values(recipe, tmp_path):
    model_args, data_args, training_args = parse([recipe], tmp_path)
    raw = yaml.safe_load((ROOT / recipe).read_text().replace("OUT_DIR", str(tmp_path)))
    for f in dataclasses.fields(model_args):  # every model key of the recipe reached ModelArguments unchanged
        if f.name in raw:
            assert getattr(model_args, f.name) == raw[f.name], f.name
    assert [d.path for d in data_args.datasets] == [d["path"] for d in raw["datasets"]]
    assert training_args.output_dir == raw["output_dir"]
    assert (training_args.learning_rate, training_args.seed) == (raw["learning_rate"], raw["seed"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_runs_as_documented_and_changes_exactly_its_keys(overlay, tmp_path):
    files = documented_command(overlay)
    assert files[-1] == overlay and all((ROOT / f).is_file() for f in files)
    base, composed = parse(files[:-1], tmp_path), parse(files, tmp_path)
    keys = yaml.safe_load((ROOT / overlay).read_text())
    changed = differing(base, composed)
    assert changed <= set(keys), overlay
    for key in set(keys) - changed:  # spelled out for the reader, equal to what the base already says
        assert any(getattr(cfg, key, object()) == keys[key] for cfg in base), key


def test_7b_differs_from_1_5b_only_in_the_llm_and_where_it_goes(tmp_path):
    small = parse(["recipes/stage1.yaml"], tmp_path)
    large = parse(["recipes/stage1.yaml", "recipes/stage1_7b.yaml"], tmp_path)
    assert differing(small, large) == {"llm_name", "output_dir"}
    assert large[0].llm_name == "Qwen/Qwen2.5-7B-Instruct"


def write(tmp_path, name: str, recipe: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


BASE = {
    "vision_name": "org/vision",
    "llm_name": "org/llm",
    "lora_target_modules": ["q_proj", "v_proj"],
    "datasets": [{"path": "org/a", "fraction": 0.5}, {"path": "org/b", "fraction": 0.5}],
    "gradient_checkpointing_kwargs": {"use_reentrant": False, "preserve_rng_state": True},
    "output_dir": "out/base",
    "learning_rate": 1.0e-4,
    "use_cpu": True,
}


def test_files_merge_left_to_right_then_flags_win(tmp_path):
    base = write(tmp_path, "base.yaml", BASE)
    overlay = write(
        tmp_path,
        "over.yaml",
        {
            "lora_target_modules": ["o_proj"],  # a list is replaced, not appended to
            "datasets": [{"path": "org/c"}],
            "gradient_checkpointing_kwargs": {"use_reentrant": True},  # a mapping merges key by key
            "learning_rate": 2.0e-4,
        },
    )
    last = write(tmp_path, "last.yaml", {"learning_rate": 3.0e-4})
    model_args, data_args, training_args = recipes.parse_recipe([base, overlay, last, "--output_dir", "out/flag"])
    assert model_args.lora_target_modules == ["o_proj"]
    assert [d.path for d in data_args.datasets] == ["org/c"]
    assert training_args.gradient_checkpointing_kwargs == {"use_reentrant": True, "preserve_rng_state": True}
    assert training_args.learning_rate == 3.0e-4  # the later file
    assert training_args.output_dir == "out/flag"  # the flag over every file
    assert model_args.vision_name == "org/vision"  # untouched keys stay
    # TRL's spelling works too, repeated, in the same order.
    again = recipes.parse_recipe(["--config", base, "--config", overlay, "--config", last, "--output_dir", "out/flag"])
    assert all(as_dict(a) == as_dict(b) for a, b in zip(again, (model_args, data_args, training_args)))


def test_an_unknown_key_names_it_and_its_files(tmp_path):
    base = write(tmp_path, "base.yaml", BASE)
    typo = write(tmp_path, "typo.yaml", {"lora_rank": 8})
    with pytest.raises(ValueError, match=r"Unknown recipe keys .*typo\.yaml.*lora_rank"):
        recipes.parse_recipe([base, typo])


def test_an_overlay_alone_is_refused_naming_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="datasets"):
        recipes.parse_recipe([str(ROOT / "recipes/stage3/lora_r8.yaml"), *ON_CPU])


def test_merge_recipes_semantics():
    merged = merge_recipes({"a": {"x": 1, "y": [1, 2]}, "b": 1}, {"a": {"y": [3]}, "c": None})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 1, "c": None}


@pytest.mark.parametrize(
    "files",
    [["recipes/stage2.yaml"], ["recipes/stage2.yaml", "recipes/stage2_7b_qlora.yaml"], ["recipes/smoke/stage2.yaml"]],
)
def test_the_resolved_recipe_parses_back_to_the_same_run(files, tmp_path):
    args = parse(files, tmp_path, "--learning_rate", "5e-5", "--packing", "true")
    resolved = resolved_recipe(*args)
    assert resolved["learning_rate"] == 5e-5 and resolved["packing"] is True
    again = recipes.parse_recipe([write(tmp_path, "resolved.yaml", resolved)])
    assert all(as_dict(a) == as_dict(b) for a, b in zip(again, args))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"too_long": "cut"}, "too_long"),
        ({"packing": True, "packing_strategy": "wrapped"}, "packing_strategy"),
    ],
)
def test_collator_keys_are_checked_at_parse_time(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        recipes.parse_recipe([write(tmp_path, "r.yaml", {**BASE, **changes})])


def test_architecture_keys_with_init_from_are_refused(tmp_path):
    recipe = {**BASE, "init_from": "out/stage1", "vision_name": None, "llm_name": None, "projector_type": "perceiver"}
    with pytest.raises(ValueError, match=r"\['projector_type'\].*init_from"):
        recipes.parse_recipe([write(tmp_path, "r.yaml", recipe)])


def test_max_tiles_and_the_token_budget_reach_the_config_and_processor(backbones, tmp_path):
    recipe = {**BASE, "vision_name": backbones["vision-siglip"], "llm_name": backbones["llm-qwen2"]}
    model_args, _, _ = recipes.parse_recipe(
        [write(tmp_path, "r.yaml", recipe), "--max_tiles", "4", "--max_image_tokens", "300"]
    )
    processor, config = recipes.build_processor(model_args)
    tile = config.vision_config.image_size
    grids = {(h // tile, w // tile) for h, w in config.image_grid_pinpoints}
    assert grids == {(r, c) for r in range(1, 5) for c in range(1, 5) if r * c <= 4}
    assert config.max_image_tokens == processor.max_image_tokens == 300


def test_run_eval_recipes_compose_the_same_way(tmp_path):
    from metrics.evaluation import parse_args

    base = write(
        tmp_path, "eval.yaml", {"model": "org/model", "dataset": "org/data", "split": "test", "batch_size": 4}
    )
    overlay = write(tmp_path, "val.yaml", {"split": "validation", "max_samples": 8})
    args = parse_args([base, overlay, "--batch_size", "2"])
    assert (args.model, args.split, args.max_samples, args.batch_size) == ("org/model", "validation", 8, 2)
    with pytest.raises(ValueError, match="max_sample"):
        parse_args([base, write(tmp_path, "typo.yaml", {"max_sample": 8})])
