"""The TRL trainer a recipe's `trainer:` names, over the data, model and LoRA the builder prepared:

- sft: SFTTrainer with our collator (rows in our schema; labels exactly on the answers);
- dpo: DPOTrainer with TRL's vision preference collator (rows `prompt, chosen, rejected, images` from
  data_scripts/make_preferences.py); `loss_type: [sigmoid, sft]` anchors the chosen answers;
- grpo: GRPOTrainer on the user turns of rows in our schema, rewarded by metrics/rewards (exact match on answerable
  rows, abstention on unanswerable ones, `abstain_cost` for abstaining on an answerable one).

Every row of every kind is checked with the SFT collator's rules before any model is built (`row_check`), so a bad
image or an over-long preference pair is dropped and named like any other row.
"""

from collections import Counter

from trl import DPOTrainer, GRPOTrainer, SFTTrainer

from metrics.rewards import make_abstention_reward

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "images")


def row_check(trainer: str, check_row):
    """The data check for `trainer`'s rows, built on the SFT collator's `check_row` (images decode, the chat
    renders, the answer is labelled, the row fits max_length): a preference row is checked as prompt + chosen and
    as prompt + rejected; a GRPO row is our schema's, checked as it is."""
    if trainer != "dpo":
        return check_row

    def check_pair(row: dict):
        missing = [c for c in PREFERENCE_COLUMNS if c not in row]
        if missing:
            return "bad_messages", f"not a preference row: no {missing} (make it with data_scripts.make_preferences)"
        for side in ("chosen", "rejected"):
            problem = check_row({"id": row.get("id"), "messages": row["prompt"] + row[side], "images": row["images"]})
            if problem:
                return problem[0], f"{side}: {problem[1]}"
        return None

    return check_pair


class CountingCollator:
    """TRL's own collator for DPO/GRPO, with the `stats` the checkpoint guard saves and restores (rows seen and kept:
    the data check already dropped every bad row, so the two stay equal)."""

    def __init__(self, collator):
        self.collator = collator
        self.stats = {"seen": 0, "kept": 0, "truncated": 0, "all_masked": 0, "skipped": Counter()}

    def __call__(self, rows):
        self.stats["seen"] += len(rows)
        self.stats["kept"] += len(rows)
        return self.collator(rows)


def grpo_prompts(ds):
    """Our schema's rows as GRPO prompts: the user turn as `prompt`; `answers` and `answerable` stay for the reward."""
    return ds.map(lambda row: {"prompt": row["messages"][:1]}, remove_columns=["messages"], keep_in_memory=True)


def make_trainer(kind: str, model, model_args, training_args, datasets: dict, processor, collator, peft_config):
    """(trainer, the collator whose stats the checkpoint guard keeps: it becomes the trainer's data_collator)."""
    common = dict(model=model, args=training_args, processing_class=processor, peft_config=peft_config)
    if kind == "sft":
        trainer = SFTTrainer(
            **common, train_dataset=datasets["train"], eval_dataset=datasets["eval"], data_collator=collator
        )
        return trainer, collator
    if kind == "grpo":
        reward = make_abstention_reward(model_args.abstain_cost)
        train, evaluation = (None if ds is None else grpo_prompts(ds) for ds in (datasets["train"], datasets["eval"]))
        trainer = GRPOTrainer(**common, reward_funcs=reward, train_dataset=train, eval_dataset=evaluation)
        return trainer, CountingCollator(trainer.data_collator)
    ref_model = None if peft_config else reference_model(model)  # with LoRA the reference is the adapter turned off
    trainer = DPOTrainer(**common, ref_model=ref_model, train_dataset=datasets["train"], eval_dataset=datasets["eval"])
    return trainer, CountingCollator(trainer.data_collator)


def reference_model(model):
    """A frozen copy of the policy before training (DPOTrainer would reload it from config._name_or_path, which
    needs trust_remote_code for our folders)."""
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference
