"""Checkpoints that cannot be lost: a manifest written last vouches for each checkpoint-N, rotation runs only after
it, resume trusts nothing else, and TRL's token count and the collator's stats continue across a resume."""

import contextlib
import copy
import errno
import json
import logging
import os
import shutil
from collections import Counter

from transformers import TrainerCallback

from data_scripts.check_rows import write_json_atomically

logger = logging.getLogger(__name__)
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"  # the manifest: written last; resume trusts a checkpoint it vouches for
COUNTERS_FILE = "run_counters_rank{rank}.json"  # num_tokens + collator stats, per process (the collator's are)


def checkpoint_step(path: str) -> int | None:
    """N for a checkpoint-N folder, else None."""
    name = os.path.basename(os.path.normpath(path))
    step = name.removeprefix("checkpoint-")
    return int(step) if step != name and step.isdigit() else None


def list_checkpoints(output_dir: str) -> list[str]:
    """The checkpoint-N folders of `output_dir`, lowest step first."""
    if not os.path.isdir(output_dir):
        return []
    paths = [os.path.join(output_dir, name) for name in os.listdir(output_dir)]
    return sorted((p for p in paths if checkpoint_step(p) is not None and os.path.isdir(p)), key=checkpoint_step)


def write_manifest(checkpoint: str, global_step: int) -> None:
    """COMPLETE_MARKER lists every file of the checkpoint with its size and is written last: being there says the save
    finished, its content that nothing went missing or was cut short since. Sizes rather than hashes: they catch what
    a kill or a full disk leaves, for free; a hash re-reads the whole checkpoint (for a 7B run, tens of GB of
    optimizer state) at every save."""
    files = {}
    for root, _, names in os.walk(checkpoint):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), checkpoint)
            if not relative.startswith(COMPLETE_MARKER):
                files[relative] = os.path.getsize(os.path.join(root, name))
    manifest = {"global_step": global_step, "files": dict(sorted(files.items()))}
    write_json_atomically(os.path.join(checkpoint, COMPLETE_MARKER), manifest)


def checkpoint_problem(checkpoint: str) -> str | None:
    """Why `checkpoint` is not whole, or None when every file its manifest lists is there at its saved size."""
    try:
        with open(os.path.join(checkpoint, COMPLETE_MARKER)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return f"no {COMPLETE_MARKER} (interrupted while saving or deleting it)"
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return f"{COMPLETE_MARKER} holds no manifest (an older run_sft's empty marker): its files cannot be checked"
    for relative, size in manifest["files"].items():
        path = os.path.join(checkpoint, relative)
        if not os.path.isfile(path):
            return f"{relative} is missing ({size} bytes when saved)"
        if os.path.getsize(path) != size:
            return f"{relative} has {os.path.getsize(path)} bytes, {size} when saved (cut short or overwritten)"
    step = checkpoint_step(checkpoint)
    if step is not None and manifest.get("global_step") != step:
        return f"its manifest is for step {manifest.get('global_step')} (a copied or renamed folder)"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """Newest whole checkpoint-N (see checkpoint_problem); each newer one skipped is named in the log, with why."""
    for checkpoint in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning(f"Not resuming from {checkpoint}: {problem}.")
    return None


def delete_checkpoint(checkpoint: str) -> None:
    """Manifest first: a kill while deleting leaves a leftover that resume skips, never a vouched-for folder with files
    gone."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(checkpoint, COMPLETE_MARKER))
    shutil.rmtree(checkpoint, ignore_errors=True)


def rotate_checkpoints(output_dir: str, save_total_limit: int | None, protect: list[str | None]) -> None:
    """Keep the `save_total_limit` newest whole checkpoints, those in `protect` (the one just saved, the best one)
    always among them; delete the rest and every leftover (no valid manifest), which never counts against the limit.
    Called only after the newest checkpoint's manifest is written, so the newest whole checkpoint is never deleted."""
    if not save_total_limit or save_total_limit <= 0:
        return
    problems = {c: checkpoint_problem(c) for c in list_checkpoints(output_dir)}
    whole = [c for c, problem in problems.items() if problem is None]
    wanted = {os.path.normpath(p) for p in protect if p}
    protected = [c for c in whole if os.path.normpath(c) in wanted]
    others = [c for c in whole if c not in protected]
    kept = set(protected + others[len(others) - max(save_total_limit - len(protected), 0) :])
    for checkpoint, problem in problems.items():
        if checkpoint not in kept:
            logger.info(f"Deleting {checkpoint} ({f'leftover: {problem}' if problem else 'save_total_limit'}).")
            delete_checkpoint(checkpoint)


def disown_later_checkpoints(output_dir: str, global_step: int) -> None:
    """A run starting at `global_step` (0, or the step it resumed from) writes its own checkpoints for later steps; any
    on disk belong to an abandoned run. Their manifests go now, so resume never picks one and a kill while the Trainer
    overwrites one never leaves an old manifest vouching for a mix of old and new files of equal sizes."""
    for checkpoint in list_checkpoints(output_dir):
        marker = os.path.join(checkpoint, COMPLETE_MARKER)
        if checkpoint_step(checkpoint) > global_step and os.path.exists(marker):
            logger.warning(f"{checkpoint} is later than step {global_step}, where this run starts: no longer trusted.")
            os.remove(marker)


def stats_minus(stats: dict, other: dict) -> dict:
    """`stats - other` for the collator's counters (ints, and per-reason dicts whose zero entries are dropped)."""
    out = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            out[key] = {k: n for k, n in stats_minus(value, other.get(key, {})).items() if n}
        else:
            out[key] = value - other.get(key, 0)
    return out


class StatsBeforeEachBatch:
    """The collator as the Trainer calls it, keeping its stats from before the latest batch: accelerate's
    DataLoaderShard collates one batch ahead of the step it trains (to see the epoch's end coming), and a resumed run
    collates that batch again, so a mid-epoch checkpoint must not count it."""

    def __init__(self, collator):
        self.collator, self.before = collator, None

    def __call__(self, rows):
        self.before = copy.deepcopy(self.collator.stats)
        return self.collator(rows)


class CheckpointGuard(TrainerCallback):
    """Checkpoints that cannot be lost, and counters that continue across a resume.

    A checkpoint is whole when its manifest (`write_manifest`, written once the Trainer and every rank are done)
    matches the folder; resume trusts nothing else. Rotation happens here, after the manifest: the Trainer rotates at
    the end of `_save_checkpoint`, before any callback runs, so a kill there could leave the previous checkpoint
    deleted and the new one unmarked. The Trainer offers no hook in between; overriding `_save_checkpoint` would copy
    ~70 lines of it, so its rotation is switched off for the run (`save_total_limit=None` from on_train_begin to
    on_train_end) and `rotate_checkpoints` runs in `on_save` instead; the Trainer's saving itself is untouched.
    TRL's token count and the collator's stats restart at 0 in a new process: each process saves its own next to the
    manifest (COUNTERS_FILE) and `restore` puts them back before `trainer.train(resume_from_checkpoint=...)`.
    """

    def __init__(self, trainer, collator):
        self.trainer, self.collator = trainer, collator
        self.batches = StatsBeforeEachBatch(collator)
        trainer.data_collator = self.batches  # read when train() builds the DataLoader
        self.save_total_limit = None
        self.resume_from = None  # the checkpoint this run resumes from (resolve_resume), set by the builder
        self.prefetched = {}  # stats of the batch collated ahead of the step just trained

    def on_train_begin(self, args, state, control, **kwargs):
        self.save_total_limit, args.save_total_limit = args.save_total_limit, None
        if args.should_save:
            disown_later_checkpoints(args.output_dir, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        # The latest collator call fetched the next step's batch, unless the epoch just ended (nothing left to fetch).
        mid_epoch = self.batches.before is not None and not float(state.epoch or 0).is_integer()
        self.prefetched = stats_minus(self.collator.stats, self.batches.before) if mid_epoch else {}

    def on_save(self, args, state, control, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        counters = {
            "global_step": state.global_step,
            "num_tokens": self.trainer._total_train_tokens,  # TRL 1.16 counts here, from 0 in every process
            "collator": stats_minus(self.collator.stats, self.prefetched),
        }
        write_json_atomically(os.path.join(checkpoint, COUNTERS_FILE.format(rank=args.process_index)), counters)
        self.trainer.accelerator.wait_for_everyone()  # every rank's files are on disk before the manifest lists them
        if args.should_save:
            write_manifest(checkpoint, state.global_step)
            rotate_checkpoints(args.output_dir, self.save_total_limit, [checkpoint, state.best_model_checkpoint])

    def on_train_end(self, args, state, control, **kwargs):
        args.save_total_limit = self.save_total_limit

    def restore(self, checkpoint: str) -> None:
        """num_tokens and the collator's stats continue from `checkpoint`'s."""
        path = os.path.join(checkpoint, COUNTERS_FILE.format(rank=self.trainer.args.process_index))
        if not os.path.isfile(path):
            logger.warning(f"No {path}: num_tokens and the collator's stats restart at 0.")
            return
        with open(path) as f:
            counters = json.load(f)
        self.trainer._total_train_tokens = counters["num_tokens"]
        for key, value in counters["collator"].items():
            self.collator.stats[key] = Counter(value) if isinstance(value, dict) else value


# How a full disk surfaces: OSError ENOSPC (json, shutil), safetensors' "No space left on device (os error 28)",
# torch.save's zip writer "unexpected pos N vs M" or "file write failed" (it drops the errno).
OUT_OF_SPACE_SIGNS = ("No space left on device", "os error 28", "unexpected pos", "file write failed")


def out_of_space(error: BaseException, output_dir: str) -> str | None:
    """A plain message when `error` (or what it was raised from) is a write that ran out of disk space, else None."""
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if not any(
        (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
        or any(s in str(e) for s in OUT_OF_SPACE_SIGNS)
        for e in chain
    ):
        return None
    free = shutil.disk_usage(output_dir).free if os.path.isdir(output_dir) else 0
    whole = last_complete_checkpoint(output_dir)
    return (
        f"No space left in OUTPUT_DIR {output_dir} ({free / 2**20:.1f} MiB free) while writing "
        f"({type(error).__name__}: {str(error)[:200]}). A checkpoint cut short has no manifest and is never resumed "
        f"from; the newest whole one is {whole or 'none'}. Free space (or lower save_total_limit, or "
        "save_only_model: true) and rerun with resume_from_checkpoint: true."
    )


def resolve_resume(resume, output_dir: str) -> str | None:
    """`resume_from_checkpoint` as the recipe says it: true/"last" -> the newest whole checkpoint, a fresh start when
    there is no checkpoint at all, an error naming them when there are checkpoints but none is whole; a path -> that
    checkpoint, refused unless whole; unset -> None."""
    if resume in (True, "true", "True", "last"):
        resume = last_complete_checkpoint(output_dir)
        if resume is None and (found := list_checkpoints(output_dir)):
            # Starting fresh here would let the first save's rotation delete them: a damaged checkpoint still holds
            # weights someone may want, so a human decides.
            damaged = "; ".join(f"{c}: {checkpoint_problem(c)}" for c in found)
            raise ValueError(
                f"resume_from_checkpoint=true, but no checkpoint in {output_dir} is whole: {damaged}. Nothing was "
                "deleted. Pass one of them as resume_from_checkpoint to see why it cannot be used, move them out of "
                "output_dir to start fresh, or pick another output_dir."
            )
        logger.info(f"Resuming from {resume}" if resume else "No checkpoint to resume from; starting fresh.")
    elif resume and (problem := checkpoint_problem(resume)):
        raise ValueError(
            f"resume_from_checkpoint={resume!r} is not a whole checkpoint: {problem}. Pass `true` to resume from the "
            "newest whole checkpoint in output_dir."
        )
    return resume or None
