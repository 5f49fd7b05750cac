"""The one canonical row schema every source is converted to (HF multimodal conversation format), its validator,
and saving/loading of a built dataset (`DatasetDict` + `manifest.json`)."""

import hashlib
import io
import json
import os

import datasets
import imagehash
from datasets import Features, Image, List, Value
from PIL import Image as PILImage

# What the model is trained to say for unanswerable questions: the processor's (data scripts stay free of torch).
# Copied from processing.answers.ABSTAIN_ANSWER
ABSTAIN_ANSWER = "unanswerable"
SPLITS = ("train", "validation", "test")
QUESTION_TYPES = ("extraction", "key_value", "yes_no", "counting", "layout", "doc_type", "unanswerable", "caption")
MANIFEST_NAME = "manifest.json"

# Content parts share one struct so Arrow can store them: image parts carry text=None.
_PART = {"type": Value("string"), "text": Value("string")}
FEATURES = Features(
    {
        "id": Value("string"),
        "source": Value("string"),
        "split": Value("string"),
        "images": List(Image()),
        "messages": List({"role": Value("string"), "content": List(_PART)}),
        "answers": List(Value("string")),
        "answerable": Value("bool"),
        "question_type": Value("string"),
        "image_sha256": Value("string"),
        "phash": Value("string"),
        "meta": Value("string"),  # JSON: rendered fields / source ids, so every row keeps one schema
    }
)
_HEX = set("0123456789abcdef")


def hash_image_bytes(data: bytes) -> tuple[str, str]:
    """(sha256 of the encoded bytes, 64-bit perceptual hash as 16 hex chars). Raises on undecodable bytes."""
    with PILImage.open(io.BytesIO(data)) as img:
        img.load()  # forces a full decode: truncated files raise here, not later in training
        phash = str(imagehash.phash(img))
    return hashlib.sha256(data).hexdigest(), phash


def encode_png(img: PILImage.Image) -> bytes:
    """Deterministic PNG bytes (same pixels -> same bytes -> same sha256)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def make_row(
    *, id, source, split, image_bytes, question, answers, answerable=True, question_type, meta=None, target=None
):
    """Builds a canonical single-turn row. The assistant says `target` (default answers[0]; ABSTAIN_ANSWER when
    unanswerable); `answers` keeps every gold answer (e.g. TextVQA's 10, with repeats, for VQA accuracy)."""
    sha, phash = hash_image_bytes(image_bytes)
    answers = [ABSTAIN_ANSWER] if not answerable else list(answers)
    if target is None or not answerable:
        target = answers[0] if answers else ""
    return {
        "id": str(id),
        "source": source,
        "split": split,
        "images": [{"bytes": image_bytes, "path": None}],
        "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": target}]},
        ],
        "answers": answers,
        "answerable": bool(answerable),
        "question_type": question_type,
        "image_sha256": sha,
        "phash": phash,
        "meta": json.dumps(meta or {}, sort_keys=True, ensure_ascii=False),
    }


def _text_parts(message):
    return [p.get("text") for p in message.get("content") or [] if isinstance(p, dict) and p.get("type") == "text"]


def _validate_messages(messages) -> tuple[list[str], int]:
    problems, n_image_parts = [], 0
    if not isinstance(messages, list) or not messages:
        return ["messages: must be a non-empty list"], 0
    for i, msg in enumerate(messages):
        want = "user" if i % 2 == 0 else "assistant"
        if not isinstance(msg, dict) or msg.get("role") != want:
            problems.append(f"messages[{i}]: role must be {want!r} (roles alternate, user first)")
            continue
        content = msg.get("content")
        if not isinstance(content, list) or not content:
            problems.append(f"messages[{i}]: content must be a non-empty list of parts")
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                n_image_parts += 1
                if want != "user":
                    problems.append(f"messages[{i}].content[{j}]: image parts belong to user turns")
            elif kind == "text":
                if not isinstance(part.get("text"), str) or not part["text"].strip():
                    problems.append(f"messages[{i}].content[{j}]: text part has empty text")
            else:
                problems.append(f"messages[{i}].content[{j}]: type must be 'image' or 'text', got {kind!r}")
    last = messages[-1]
    if not (isinstance(last, dict) and last.get("role") == "assistant"):
        problems.append("messages: the last turn must be the assistant's")
    return problems, n_image_parts


def _validate_answer(row) -> list[str]:
    problems = []
    answers, answerable, qtype = row.get("answers"), row.get("answerable"), row.get("question_type")
    if not isinstance(answerable, bool):
        return ["answerable: must be a bool"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return ["answers: must be a list of strings"]
    target = " ".join(_text_parts(row["messages"][-1]))  # messages were validated first
    if qtype not in QUESTION_TYPES:
        problems.append(f"question_type: {qtype!r} not in {QUESTION_TYPES}")
    if answerable:
        if not answers or not all(a.strip() for a in answers):
            problems.append("answers: answerable rows need non-empty gold answers")
        elif target not in answers:
            problems.append(f"messages: assistant answer {target!r} is not one of the gold answers")
        if qtype == "unanswerable":
            problems.append("question_type: 'unanswerable' rows must have answerable=False")
    else:
        if answers != [ABSTAIN_ANSWER] or target != ABSTAIN_ANSWER:
            problems.append(f"answers: unanswerable rows answer exactly {ABSTAIN_ANSWER!r}")
        if qtype != "unanswerable":
            problems.append("question_type: answerable=False rows must have question_type 'unanswerable'")
    return problems


def validate_row(row) -> list[str]:
    """Problems with a row (empty list = valid). Checks keys, roles, image parts vs images, answers, hashes."""
    if not isinstance(row, dict):
        return ["row: must be a dict"]
    missing = [k for k in FEATURES if k not in row]
    if missing:
        return [f"missing fields: {missing}"]
    problems = []
    for key in ("id", "source"):
        if not isinstance(row[key], str) or not row[key]:
            problems.append(f"{key}: must be a non-empty string")
    if row["split"] not in SPLITS:
        problems.append(f"split: {row['split']!r} not in {SPLITS}")
    msg_problems, n_image_parts = _validate_messages(row["messages"])
    problems += msg_problems
    images = row["images"]
    if not isinstance(images, list) or not images:
        problems.append("images: must be a non-empty list")
    elif n_image_parts != len(images):
        problems.append(f"images: {len(images)} image(s) but {n_image_parts} image part(s) in messages")
    if not msg_problems:
        problems += _validate_answer(row)
    sha, phash = row["image_sha256"], row["phash"]
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
        problems.append("image_sha256: must be 64 lowercase hex chars")
    elif (
        isinstance(images, list)
        and images
        and isinstance(images[0], dict)
        and images[0].get("bytes")
        and hashlib.sha256(images[0]["bytes"]).hexdigest() != sha
    ):
        problems.append("image_sha256: does not match the bytes of images[0]")
    if not (isinstance(phash, str) and len(phash) == 16 and set(phash) <= _HEX):
        problems.append("phash: must be 16 hex chars (64-bit imagehash.phash)")
    try:
        json.loads(row["meta"])
    except (TypeError, ValueError):
        problems.append("meta: must be a JSON string")
    return problems


def empty_split() -> datasets.Dataset:
    return datasets.Dataset.from_dict({k: [] for k in FEATURES}, features=FEATURES)


def save_dataset_dict(splits: dict, out_dir: str, manifest: dict) -> None:
    """Writes OUT/ (DatasetDict with train/validation/test, absent ones empty) and OUT/manifest.json."""
    dd = datasets.DatasetDict({s: splits.get(s) if splits.get(s) is not None else empty_split() for s in SPLITS})
    # An empty split needs one explicit (empty) shard, else datasets 5.2 writes none and load_from_disk fails.
    dd.save_to_disk(out_dir, num_shards={s: 1 for s in SPLITS if len(dd[s]) == 0})
    with open(os.path.join(out_dir, MANIFEST_NAME), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)


def load_manifest(path: str) -> dict:
    with open(os.path.join(path, MANIFEST_NAME)) as f:
        return json.load(f)


def load_dataset_dir(path: str, **kwargs) -> datasets.DatasetDict:
    """A built dataset folder (save_to_disk) or a Hub id of a dataset pushed in this schema. `kwargs` (name,
    data_dir, data_files, ...) go to `load_dataset` for a Hub id; a folder has nothing to select: they are refused."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if os.path.isdir(path):
        if kwargs:
            raise ValueError(
                f"{path!r} is a dataset folder (save_to_disk), so {sorted(kwargs)} select nothing in it; drop them "
                "or point `path` at a Hub dataset."
            )
        return datasets.load_from_disk(path)
    if os.path.exists(path):
        raise ValueError(f"{path!r} is a file; pass the folder written by a converter or make_synthetic")
    return datasets.load_dataset(path, **kwargs)
