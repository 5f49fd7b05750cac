"""On-policy preference pairs for stage 4 (DPO): where the model's own greedy answer on a split was wrong, the right
answer is chosen and the model's answer rejected; rows `id, prompt, chosen, rejected, images, answerable, kind`.

    python run_eval.py --model STAGE2/merged --dataset DATA --split train --output_dir EVAL_TRAIN
    python -m data_scripts.make_preferences --dataset DATA --predictions EVAL_TRAIN/predictions.jsonl --out PREFS

Kinds of pair (the model's own abstention: it said the abstention answer or nothing, before any threshold):
- over_abstention: answerable, the model abstained -> chosen the gold answer, rejected its abstention;
- wrong_answer: answerable, the model answered wrongly -> chosen the gold answer, rejected its answer;
- hallucination: unanswerable, the model answered -> chosen the abstention, rejected its answer;
- abstention_anchor: unanswerable, the model abstained (rightly) -> chosen the abstention, rejected an answer that
  belongs elsewhere. `--anchor other_image` (default): the gold answer of another image to the same question (seeded
  choice), so every question the model over-abstains on also has anchors and the pair differs only in what the
  image shows (mDPO's image-contrastive idea). `--anchor own`: the answer the model gave most often to the same
  question where it did answer (on-policy, but only for questions it ever answers: on the offline default 5
  questions, none of the 53 it over-abstains on). Without anchors, a model that rarely hallucinates yields pairs
  that only ever reject "unanswerable", and DPO teaches it to stop abstaining (seen here: hallucinations 0 -> 53
  of 59).
Answerable and unanswerable pairs are balanced (as many of each, seeded choice; over_abstention before
wrong_answer, hallucination before abstention_anchor).
"""

import argparse
import hashlib
import json
import os
import random
from collections import Counter

import datasets

from data_scripts.run_metadata import code_version
from data_scripts.schema import ABSTAIN_ANSWER, MANIFEST_NAME, load_dataset_dir
from processing.answers import is_abstained

KINDS = ("over_abstention", "wrong_answer", "hallucination", "abstention_anchor")
ANCHORS = ("other_image", "own")
_PART = {"type": datasets.Value("string"), "text": datasets.Value("string")}
_TURN = datasets.List({"role": datasets.Value("string"), "content": datasets.List(_PART)})
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "prompt": _TURN,
        "chosen": _TURN,
        "rejected": _TURN,
        "images": datasets.List(datasets.Image()),
        "answerable": datasets.Value("bool"),
        "kind": datasets.Value("string"),
    }
)


def said_abstention(answer: str) -> bool:
    """The model's own abstention: the one rule (is_abstained) with no confidence threshold."""
    return is_abstained(answer, 1.0, 0.0)


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def read_predictions(path: str) -> dict:
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records or not {"id", "answer", "score", "answerable"} <= records[0].keys():
        raise ValueError(f"{path} holds no run_eval predictions (id, answer, score, answerable per line).")
    return {r["id"]: r for r in records if not r.get("image_error")}


def pair_kinds(rows, predictions: dict, anchor: str = "other_image", seed: int = 0) -> dict:
    """{kind: [(row index, rejected text)]} for the rows the model got wrong (and the anchors)."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor={anchor!r}: use one of {', '.join(ANCHORS)}.")
    elsewhere = {}  # question -> Counter of the answers an anchor may reject for it
    for row_id, messages, answerable in zip(rows["id"], rows["messages"], rows["answerable"]):
        if anchor == "other_image":
            answer = messages[1]["content"][0]["text"] if answerable else None
        else:
            record = predictions.get(row_id)
            answer = record["answer"] if record and not said_abstention(record["answer"]) else None
        if answer is not None:
            elsewhere.setdefault(question_of(messages), Counter())[answer.strip()] += 1
    rng = random.Random(seed)
    kinds = {kind: [] for kind in KINDS}
    for i, (row_id, messages, answerable) in enumerate(zip(rows["id"], rows["messages"], rows["answerable"])):
        record = predictions.get(row_id)
        if record is None:
            continue
        answer, abstained = record["answer"].strip(), said_abstention(record["answer"])
        others = elsewhere.get(question_of(messages))
        if answerable and abstained:
            kinds["over_abstention"].append((i, answer or ABSTAIN_ANSWER))
        elif answerable and record["score"] < 1.0:
            kinds["wrong_answer"].append((i, answer))
        elif not answerable and not abstained:
            kinds["hallucination"].append((i, answer))
        elif not answerable and others:
            pick = others.most_common(1)[0][0] if anchor == "own" else rng.choice(sorted(others))
            kinds["abstention_anchor"].append((i, pick))
    return kinds


def question_of(messages) -> str:
    return "".join(part["text"] or "" for part in messages[0]["content"] if part["type"] == "text")


def balanced(kinds: dict, seed: int) -> list[tuple[str, int, str]]:
    """As many answerable as unanswerable pairs: each side in kind order, seeded shuffle within a kind."""
    rng = random.Random(seed)
    sides = []
    for side in (("over_abstention", "wrong_answer"), ("hallucination", "abstention_anchor")):
        pairs = []
        for kind in side:
            items = list(kinds[kind])
            rng.shuffle(items)
            pairs += [(kind, i, rejected) for i, rejected in items]
        sides.append(pairs)
    n = min(len(side) for side in sides)
    return sorted(sides[0][:n] + sides[1][:n], key=lambda p: p[1])


def build_preferences(
    dataset: str, predictions: str, out: str, split: str = "train", seed: int = 0, anchor: str = "other_image"
) -> dict:
    """Writes OUT (DatasetDict {"train": pairs}) + manifest.json; returns the manifest."""
    ds = load_dataset_dir(dataset)[split]
    columns = ds.select_columns(["id", "messages", "answerable"]).to_dict()
    kinds = pair_kinds(columns, read_predictions(predictions), anchor, seed)
    chosen_pairs = balanced(kinds, seed)
    if not chosen_pairs:
        raise ValueError(
            f"No balanced pairs from {predictions}: answerable mistakes {len(kinds['over_abstention'])} + "
            f"{len(kinds['wrong_answer'])}, unanswerable ones {len(kinds['hallucination'])} + "
            f"{len(kinds['abstention_anchor'])}; evaluate a larger split."
        )
    images = ds.cast_column("images", datasets.List(datasets.Image(decode=False))).select_columns(["images"])
    rows = []
    for kind, i, rejected in chosen_pairs:
        messages = columns["messages"][i]
        gold = messages[1]["content"][0]["text"]  # the row's assistant target (the abstention when unanswerable)
        rows.append(
            {
                "id": f"{columns['id'][i]}-{kind}",
                "prompt": messages[:1],
                "chosen": assistant(gold),
                "rejected": assistant(rejected),
                "images": images[i]["images"],
                "answerable": columns["answerable"][i],
                "kind": kind,
            }
        )
    pairs = datasets.Dataset.from_list(rows, features=FEATURES)
    manifest = {
        "source": os.path.abspath(dataset),
        "converter": "data_scripts.make_preferences",
        "converter_version": code_version(os.path.dirname(os.path.abspath(__file__))),
        "split": split,
        "predictions_sha256": sha256_of(predictions),
        "seed": seed,
        "anchor": anchor,
        "candidates": {kind: len(items) for kind, items in kinds.items()},
        "pairs": dict(Counter(row["kind"] for row in rows)),
        "fingerprint": hashlib.sha256(
            json.dumps([(r["id"], r["chosen"], r["rejected"]) for r in rows]).encode()
        ).hexdigest(),
    }
    datasets.DatasetDict({"train": pairs}).save_to_disk(out)
    with open(os.path.join(out, MANIFEST_NAME), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="a dataset folder in our schema (the one evaluated)")
    p.add_argument("--predictions", required=True, help="run_eval's predictions.jsonl on --split of --dataset")
    p.add_argument("--out", required=True, help="output folder (replaced if present)")
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anchor", choices=ANCHORS, default="other_image", help="what an abstention anchor rejects")
    args = p.parse_args(argv)
    manifest = build_preferences(args.dataset, args.predictions, args.out, args.split, args.seed, args.anchor)
    print(f"[preferences] {manifest['pairs']} pairs from candidates {manifest['candidates']} -> {args.out}")
    return manifest


if __name__ == "__main__":
    main()
