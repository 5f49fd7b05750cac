"""Checkpoints that cannot be lost (checkpoints.CheckpointGuard): a kill at every phase of a save and of rotation, for
save_total_limit 1 and 2, resumes to the identical loss curve, token count and collator stats; a vouched-for
checkpoint with a missing or cut-short file is refused, named in the log, and the previous whole one is used (with
none left, the run stops and names them: a fresh start would rotate them away).

The kills are simulated deterministically: one uninterrupted run per limit copies its output folder at each phase of
the save of step 3 (what a kill -9 at that instant leaves on disk: nothing else is written after it), cutting the file
being written short where the phase is a write; each copy is then resumed."""

import errno
import json
import logging
import os
import shutil
import subprocess
import types
from collections import Counter
from pathlib import Path

import pytest
import yaml
from transformers import Trainer, TrainerCallback, TrainerState

import recipes
from data_scripts.make_synthetic import build_synthetic
from recipes import checkpoints

KILL_STEP, MAX_STEPS = 3, 4  # 6 rows, 2 per batch: 3 steps per epoch, so step 2 saves mid-epoch, step 3 at its end
# Phases of the save of KILL_STEP, in order, and the checkpoint a resume must pick from what each leaves on disk.
PHASES = [
    ("model_cut", 2),  # model.safetensors cut short: killed while writing it
    ("model_written", 2),  # before the optimizer
    ("optimizer_cut", 2),  # optimizer.pt cut short: killed while writing it
    ("optimizer_written", 2),  # before the RNG state
    ("rng_written", 2),  # before trainer_state.json
    ("trainer_state_written", 2),  # the Trainer is done; before our on_save
    ("counters_written", 2),  # before the manifest
    ("manifest_tmp_written", 2),  # the manifest's temporary file, not yet renamed
    ("manifest_written", 3),  # before rotation, which deletes checkpoint-{KILL_STEP - limit}:
    ("rotation_unmarked", 3),  # its manifest removed, nothing else yet
    ("rotation_half_deleted", 3),  # half of its files deleted
    ("saved", 3),  # rotation done: killed during the next step
]
PHASE_NAMES_ROTATION = ("rotation_unmarked", "rotation_half_deleted")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("data") / "synthetic")
    build_synthetic(out, n=40, seed=0)
    return out


def write_recipe(folder: Path, output_dir: Path, backbones: dict, synthetic: str, **overrides) -> str:
    recipe = {
        "vision_name": backbones["vision-siglip"],
        "llm_name": backbones["llm-qwen2"],
        "llm_full": True,
        "datasets": [{"path": synthetic, "split": "train"}],
        "max_train_samples": 6,
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "per_device_train_batch_size": 2,
        "max_steps": MAX_STEPS,
        "learning_rate": 1.0e-3,
        "warmup_steps": 2,  # a fresh optimizer or scheduler would show in the losses
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 1,
        "eval_strategy": "no",
        "seed": 0,
        "dataloader_num_workers": 0,
        "report_to": "none",
        **overrides,
    }
    path = folder / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def capture_phases(monkeypatch, out: Path, snapshots: Path) -> None:
    """Copy `out` at every phase of the save (and rotation) of KILL_STEP while the run itself goes on untouched."""
    armed = {"on": False}

    def snapshot(name: str, cut: str | None = None) -> None:
        if armed["on"]:
            shutil.copytree(out, snapshots / name)
            if cut:
                cut_short(snapshots / name / f"checkpoint-{KILL_STEP}" / cut)

    def before(name: str, function, cut_name: str | None = None, cut: str | None = None):
        def wrapper(*args, **kwargs):
            if cut_name:
                snapshot(cut_name, cut)
            snapshot(name)
            return function(*args, **kwargs)

        return wrapper

    save_checkpoint = Trainer._save_checkpoint

    def arm(self, *args, **kwargs):
        if self.state.global_step == KILL_STEP + 1:
            snapshot("saved")  # the save and rotation of KILL_STEP done; killed during the next step
        armed["on"] = self.state.global_step == KILL_STEP
        return save_checkpoint(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_save_checkpoint", arm)
    monkeypatch.setattr(
        Trainer,
        "_save_optimizer_and_scheduler",
        before("model_written", Trainer._save_optimizer_and_scheduler, "model_cut", "model.safetensors"),
    )
    monkeypatch.setattr(
        Trainer,
        "_save_rng_state",
        before("optimizer_written", Trainer._save_rng_state, "optimizer_cut", "optimizer.pt"),
    )
    monkeypatch.setattr(TrainerState, "save_to_json", before("rng_written", TrainerState.save_to_json))
    monkeypatch.setattr(
        checkpoints.CheckpointGuard, "on_save", before("trainer_state_written", checkpoints.CheckpointGuard.on_save)
    )
    monkeypatch.setattr(checkpoints, "write_manifest", before("counters_written", checkpoints.write_manifest))
    monkeypatch.setattr(checkpoints, "rotate_checkpoints", before("manifest_written", checkpoints.rotate_checkpoints))
    replace, rmtree = os.replace, shutil.rmtree

    def replace_marker(src, dst, *args, **kwargs):
        if str(dst).endswith(checkpoints.COMPLETE_MARKER):
            snapshot("manifest_tmp_written")
        return replace(src, dst, *args, **kwargs)

    def rmtree_checkpoint(path, *args, **kwargs):
        name = Path(path).name
        if Path(path).parent == out and name.startswith("checkpoint-"):
            snapshot("rotation_unmarked")  # delete_checkpoint removed the manifest first
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            for file in files[: len(files) // 2]:
                file.unlink()
            snapshot("rotation_half_deleted")
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace_marker)
    monkeypatch.setattr(shutil, "rmtree", rmtree_checkpoint)


@pytest.fixture(scope="module", params=[1, 2], ids=lambda limit: f"limit{limit}")
def reference(request, tmp_path_factory, backbones, synthetic) -> dict:
    """One uninterrupted run per save_total_limit, with the on-disk state of every kill phase copied aside."""
    limit = request.param
    folder = tmp_path_factory.mktemp(f"limit{limit}")
    out, snapshots = folder / "run", folder / "snapshots"
    with pytest.MonkeyPatch.context() as monkeypatch:
        capture_phases(monkeypatch, out, snapshots)
        summary = recipes.run([write_recipe(folder, out, backbones, synthetic, save_total_limit=limit)])
    history = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())["log_history"]
    return {
        "limit": limit,
        "folder": folder,
        "out": out,
        "snapshots": snapshots,
        "summary": summary,
        "tokens": {e["step"]: e["num_tokens"] for e in history if "num_tokens" in e},
    }


def whole_checkpoints(out: Path) -> list[str]:
    return [Path(c).name for c in checkpoints.list_checkpoints(str(out)) if checkpoints.checkpoint_problem(c) is None]


def resume(reference: dict, backbones, synthetic, out: Path, checkpoint: str = "true") -> dict:
    """The reference run's recipe, pointed at `out` (a copy of what a kill left), resumed in this process."""
    recipe = write_recipe(reference["folder"], out, backbones, synthetic, save_total_limit=reference["limit"])
    return recipes.run([recipe, "--resume_from_checkpoint", checkpoint])


def assert_same_run(summary: dict, out: Path, reference: dict) -> None:
    expected = reference["summary"]
    assert summary["losses"] == expected["losses"]  # bit-identical, steps 1..MAX_STEPS
    assert [s for s, _ in summary["losses"]] == list(range(1, MAX_STEPS + 1))
    assert summary["num_tokens"] == expected["num_tokens"] > 0
    assert summary["collator"] == expected["collator"]
    assert summary["collator"]["seen"] > 0
    history = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())["log_history"]
    assert {e["step"]: e["num_tokens"] for e in history if "num_tokens" in e} == reference["tokens"]
    counters = f"checkpoint-{MAX_STEPS}/{checkpoints.COUNTERS_FILE.format(rank=0)}"
    assert json.loads((out / counters).read_text()) == json.loads((reference["out"] / counters).read_text())
    limit = reference["limit"]  # rotation after the resume: the newest `limit` whole ones, no leftovers
    assert whole_checkpoints(out) == [f"checkpoint-{s}" for s in range(MAX_STEPS - limit + 1, MAX_STEPS + 1)]
    assert [Path(c).name for c in checkpoints.list_checkpoints(str(out))] == whole_checkpoints(out)


@pytest.mark.slow
def test_reference_run_keeps_the_limit_and_saw_every_phase(reference):
    out, limit = reference["out"], reference["limit"]
    snapshots = reference["snapshots"]
    assert sorted(p.name for p in snapshots.iterdir()) == sorted(name for name, _ in PHASES)
    rotated = f"checkpoint-{KILL_STEP - limit}"  # rotation at KILL_STEP deletes it; the snapshots caught it midway
    files = {n: len(list((snapshots / n / rotated).rglob("*"))) for n in PHASE_NAMES_ROTATION}
    assert 0 < files["rotation_half_deleted"] < files["rotation_unmarked"]
    assert (snapshots / "manifest_written" / rotated / checkpoints.COMPLETE_MARKER).exists()
    assert not (snapshots / "saved" / rotated).exists()
    assert whole_checkpoints(out) == [f"checkpoint-{s}" for s in range(MAX_STEPS - limit + 1, MAX_STEPS + 1)]
    counters = json.loads((out / f"checkpoint-{MAX_STEPS}" / checkpoints.COUNTERS_FILE.format(rank=0)).read_text())
    assert counters["num_tokens"] == reference["summary"]["num_tokens"] == reference["tokens"][MAX_STEPS]
    manifest = json.loads((out / f"checkpoint-{MAX_STEPS}" / checkpoints.COMPLETE_MARKER).read_text())
    assert manifest["global_step"] == MAX_STEPS
    assert {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        checkpoints.COUNTERS_FILE.format(rank=0),
    } <= set(manifest["files"])


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES, ids=[name for name, _ in PHASES])
def test_kill_at_every_phase_resumes_to_the_same_run(reference, phase, backbones, synthetic, caplog):
    name, resume_step = phase
    caplog.set_level(logging.INFO, logger="recipes.checkpoints")
    out = reference["snapshots"] / name
    rotated = out / f"checkpoint-{KILL_STEP - reference['limit']}"  # what rotation at KILL_STEP deletes
    if name.startswith("rotation_"):  # a leftover: there, but without its manifest
        assert rotated.is_dir() and not (rotated / checkpoints.COMPLETE_MARKER).exists()
    assert checkpoints.last_complete_checkpoint(str(out)) == str(out / f"checkpoint-{resume_step}")
    summary = resume(reference, backbones, synthetic, out)
    assert summary["resumed_from"] == str(out / f"checkpoint-{resume_step}")
    assert f"Resuming from {out / f'checkpoint-{resume_step}'}" in caplog.text
    assert_same_run(summary, out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["optimizer.pt missing", "model.safetensors cut short"])
def test_vouched_for_checkpoint_with_a_damaged_file_is_refused(reference, damage, backbones, synthetic, caplog):
    out = reference["folder"] / f"damaged-{damage.split('.')[0]}"
    shutil.copytree(reference["out"], out)
    newest = out / f"checkpoint-{MAX_STEPS}"
    file = newest / damage.split()[0]
    if "missing" in damage:
        file.unlink()
    else:
        cut_short(file)
    with pytest.raises(ValueError, match=f"{damage.split()[0]} (is missing|has \\d+ bytes)"):  # an explicit path
        resume(reference, backbones, synthetic, out, checkpoint=str(newest))
    caplog.clear()
    caplog.set_level(logging.INFO, logger="recipes.checkpoints")
    if reference["limit"] == 1:  # checkpoints, none whole: stop and name it; a fresh start would rotate it away
        before = sorted(p.relative_to(out) for p in newest.rglob("*"))
        with pytest.raises(ValueError, match=f"no checkpoint in {out} is whole: {newest}: {damage.split()[0]}"):
            resume(reference, backbones, synthetic, out)
        assert sorted(p.relative_to(out) for p in newest.rglob("*")) == before  # nothing deleted
        return
    summary = resume(reference, backbones, synthetic, out)  # `true`: the newest whole one
    assert f"Not resuming from {newest}: {damage.split()[0]}" in caplog.text
    assert summary["resumed_from"] == str(out / f"checkpoint-{MAX_STEPS - 1}")  # the previous whole checkpoint
    assert_same_run(summary, out, reference)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs: a real filesystem that runs out of space (mounting needs root, as CI is here)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); run as root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


class FillDisk(TrainerCallback):
    """After step FULL_STEP trains, before it saves: a ballast file leaves only `leave(output_dir)` bytes free."""

    def __init__(self, leave):
        self.leave = leave

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == FULL_STEP:
            ballast = Path(args.output_dir).parent / "ballast"
            with open(ballast, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(ballast.parent).free - self.leave(args.output_dir))


FULL_STEP = 2
ROOM_LEFT = {  # where the save of FULL_STEP runs out: its first file, or the optimizer (torch.save)
    "at_once": lambda out: 0,
    "in_optimizer": lambda out: room_before_optimizer(Path(out) / "checkpoint-1"),
}


def room_before_optimizer(checkpoint: Path) -> int:
    """What every file saved before optimizer.pt takes on a 4 KiB-block tmpfs, plus two blocks."""
    files = [p for p in checkpoint.rglob("*") if p.is_file() and p.name != "optimizer.pt"]
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in files) + 2 * 4096


@pytest.mark.slow
@pytest.mark.parametrize("where", ROOM_LEFT)
def test_a_full_disk_names_itself_keeps_what_is_whole_and_resumes(reference, where, small_disk, backbones, synthetic):
    out = small_disk / "run"
    recipe = write_recipe(reference["folder"], out, backbones, synthetic, save_total_limit=reference["limit"])
    trainer = recipes.build_trainer(*recipes.parse_recipe([recipe]))
    trainer.add_callback(FillDisk(ROOM_LEFT[where]))
    with pytest.raises(OSError) as error:
        recipes.train(trainer)
    assert error.value.errno == errno.ENOSPC
    message = str(error.value)
    assert f"No space left in OUTPUT_DIR {out}" in message
    assert f"the newest whole one is {out / 'checkpoint-1'}" in message
    assert ("No space left on device" if where == "at_once" else "unexpected pos") in str(error.value.__cause__)
    assert whole_checkpoints(out) == ["checkpoint-1"]  # the cut-short save never counts, the last whole one stays
    (small_disk / "ballast").unlink()
    summary = resume(reference, backbones, synthetic, out)
    assert summary["resumed_from"] == str(out / "checkpoint-1")
    assert_same_run(summary, out, reference)


# ---- the pieces, on constructed folders (no training) -----------------------------------------------------------


def make_checkpoint(out: Path, step: int, whole: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name, size in (("model.safetensors", 64), ("optimizer.pt", 128), ("trainer_state.json", 8)):
        (path / name).write_bytes(bytes(size))
    if whole:
        checkpoints.write_manifest(str(path), step)
    return path


def names(out: Path) -> list[str]:
    return [Path(c).name for c in checkpoints.list_checkpoints(str(out))]


@pytest.mark.parametrize("limit", [1, 2])
def test_leftovers_do_not_count_and_the_newest_whole_one_survives(tmp_path, limit):
    make_checkpoint(tmp_path, 1)
    half = make_checkpoint(tmp_path, 2)  # rotation was killed halfway through deleting it: manifest gone first
    (half / checkpoints.COMPLETE_MARKER).unlink()
    (half / "model.safetensors").unlink()
    make_checkpoint(tmp_path, 3)
    make_checkpoint(tmp_path, 5, whole=False)  # a save killed halfway, later than the current one
    current = make_checkpoint(tmp_path, 4)
    checkpoints.rotate_checkpoints(str(tmp_path), limit, [str(current), None])
    assert names(tmp_path) == ["checkpoint-3", "checkpoint-4"][-limit:]
    assert checkpoints.last_complete_checkpoint(str(tmp_path)) == str(current)


def test_rotation_keeps_the_best_checkpoint(tmp_path):
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    best = str(tmp_path / "checkpoint-1")
    checkpoints.rotate_checkpoints(str(tmp_path), 1, [str(tmp_path / "checkpoint-3"), best])
    assert names(tmp_path) == ["checkpoint-1", "checkpoint-3"]
    checkpoints.rotate_checkpoints(str(tmp_path), None, [])  # no limit: nothing deleted, as with the Trainer
    assert names(tmp_path) == ["checkpoint-1", "checkpoint-3"]


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: (p / "optimizer.pt").unlink(), "optimizer.pt is missing (128 bytes when saved)"),
        (lambda p: cut_short(p / "model.safetensors"), "model.safetensors has 32 bytes, 64 when saved"),
        (lambda p: (p / checkpoints.COMPLETE_MARKER).write_text(""), "holds no manifest"),  # an older run_sft's marker
        (lambda p: (p / checkpoints.COMPLETE_MARKER).unlink(), f"no {checkpoints.COMPLETE_MARKER}"),
        (lambda p: p.rename(p.parent / "checkpoint-9"), "its manifest is for step 2"),
    ],
)
def test_checkpoint_problem_names_what_is_wrong(tmp_path, damage, problem, caplog):
    make_checkpoint(tmp_path, 1)
    damage(make_checkpoint(tmp_path, 2))
    assert checkpoints.last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")
    assert problem in caplog.text


def test_resume_true_with_checkpoints_but_none_whole_stops_and_deletes_nothing(tmp_path):
    """Limit 1: the newest save was killed before its manifest, the previous one lost optimizer.pt. Starting fresh
    would rotate both away at the first save (the previous one's good weights with them)."""
    assert checkpoints.resolve_resume(True, str(tmp_path)) is None  # no checkpoint at all: a fresh start
    (make_checkpoint(tmp_path, 6) / "optimizer.pt").unlink()
    make_checkpoint(tmp_path, 7, whole=False)
    files = sorted(tmp_path.rglob("*"))
    for resume in (True, "true", "last"):
        with pytest.raises(ValueError) as error:
            checkpoints.resolve_resume(resume, str(tmp_path))
        message = str(error.value)
        assert f"{tmp_path / 'checkpoint-6'}: optimizer.pt is missing (128 bytes when saved)" in message
        assert f"{tmp_path / 'checkpoint-7'}: no {checkpoints.COMPLETE_MARKER}" in message
        assert "Nothing was deleted" in message
    assert sorted(tmp_path.rglob("*")) == files
    assert checkpoints.resolve_resume(None, str(tmp_path)) is None  # not asked to resume: not this check's business


def test_later_checkpoints_are_disowned_when_a_run_starts_before_them(tmp_path):
    for step in (2, 4, 6):
        make_checkpoint(tmp_path, step)
    checkpoints.disown_later_checkpoints(str(tmp_path), 4)
    assert whole_checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / "checkpoint-6" / "model.safetensors").exists()  # files stay until overwritten or rotated


def test_counters_restore_into_the_collator_types(tmp_path):
    collator = types.SimpleNamespace(stats={"seen": 0, "kept": 0, "all_masked": 0, "skipped": Counter()})
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(process_index=0), data_collator=collator)
    guard = checkpoints.CheckpointGuard(trainer, collator)
    assert trainer.data_collator is guard.batches  # the Trainer's DataLoader collates through the guard
    saved = {"num_tokens": 1234, "collator": {"seen": 9, "kept": 7, "all_masked": 1, "skipped": {"too_long": 1}}}
    (tmp_path / checkpoints.COUNTERS_FILE.format(rank=0)).write_text(json.dumps(saved))
    guard.restore(str(tmp_path))
    assert trainer._total_train_tokens == 1234
    collator.stats["skipped"]["too_long"] += 1  # still a Counter: new reasons and increments work
    collator.stats["skipped"]["unreadable_image"] += 1
    assert collator.stats == {
        "seen": 9,
        "kept": 7,
        "all_masked": 1,
        "skipped": Counter(too_long=2, unreadable_image=1),
    }
    assert checkpoints.stats_minus(collator.stats, {"seen": 2, "skipped": {"too_long": 2}}) == {
        "seen": 7,
        "kept": 7,
        "all_masked": 1,
        "skipped": {"unreadable_image": 1},
    }
