"""Exact (sha256) and near (perceptual hash) de-duplication within splits, across splits and against other sources.

Why phash: imagehash.phash (DCT of a 32x32 grey thumbnail, 64 bits) survives re-encoding, resizing and small colour
shifts, which is what re-uploaded copies of the same document/photo look like. Two images are near duplicates when
their hashes differ in <= PHASH_NEAR_DISTANCE of 64 bits: 4 is conservative (re-compressed/resized copies land at
0-2; different documents of one template usually land above 6), so we rarely drop distinct images.

Templated images are the exception: 64 bits of low-frequency DCT see the layout, not the text, so two renderings of
one synthetic template with different values are often <= 4 bits apart (measured on make_synthetic n=500: nearest
distinct neighbour median 6 bits, 5th percentile 2). For such sets pass `near_key` (e.g. a hash of the rendered
content): near duplicates are then rows showing the same content, whatever the noise or rotation.
"""

import itertools
from collections import Counter

PHASH_NEAR_DISTANCE = 4
# Eval splits win: a train row whose image also appears in validation/test is dropped, never the eval row.
SPLIT_PRIORITY = ("test", "validation", "train")


class NearDupIndex:
    """Finds a stored 64-bit hash within `max_distance` bits without comparing against every stored hash.

    Pigeonhole: split the 64 bits into max_distance+1 chunks; two hashes within max_distance bits agree exactly on
    at least one chunk, so only hashes sharing a chunk are compared.
    """

    def __init__(self, max_distance: int = PHASH_NEAR_DISTANCE):
        self.max_distance = max_distance
        n = max_distance + 1
        bounds = [round(i * 64 / n) for i in range(n + 1)]
        self._chunks = list(itertools.pairwise(bounds))
        self._buckets = [{} for _ in self._chunks]

    def _keys(self, h: int):
        for (lo, hi), bucket in zip(self._chunks, self._buckets):
            yield bucket, (h >> lo) & ((1 << (hi - lo)) - 1)

    def add(self, phash_hex: str) -> None:
        h = int(phash_hex, 16)
        for bucket, key in self._keys(h):
            bucket.setdefault(key, []).append(h)

    def contains_near(self, phash_hex: str) -> bool:
        h = int(phash_hex, 16)
        for bucket, key in self._keys(h):
            for other in bucket.get(key, ()):
                if (h ^ other).bit_count() <= self.max_distance:
                    return True
        return False


class ExactKeyIndex:
    """Same interface as NearDupIndex for keys that are equal or not (content hashes)."""

    def __init__(self):
        self._keys = set()

    def add(self, key: str) -> None:
        self._keys.add(key)

    def contains_near(self, key: str) -> bool:
        return key in self._keys


def question_of(messages) -> str:
    """Normalised text of the first user turn (what makes two rows on one image different)."""
    parts = messages[0]["content"]
    return " ".join(p["text"] for p in parts if p["type"] == "text").strip().lower()


def dedup_splits(splits: dict, against=None, max_distance: int = PHASH_NEAR_DISTANCE, near_key=None):
    """Returns ({split: kept Dataset}, Counter{(split, reason): n}).

    Within a split, rows repeating an (image, question) pair exactly or near-exactly are dropped (many questions
    on one image are kept). Across splits, a lower-priority split loses rows whose image (exact or near) is in a
    higher-priority split. `against`: a NearDupIndex of images from other sources' eval splits to keep out.
    `near_key(row) -> str`: exact content key replacing the phash for "near" (see the module docstring).
    """

    def new_index():
        return NearDupIndex(max_distance) if near_key is None else ExactKeyIndex()

    columns = ["image_sha256", "phash", "messages"] + (["meta"] if near_key is not None else [])
    dropped, kept = Counter(), {}
    seen_sha, seen_near = set(), new_index()
    for split in [s for s in SPLIT_PRIORITY if s in splits] + [s for s in splits if s not in SPLIT_PRIORITY]:
        ds = splits[split]
        cols = ds.select_columns(columns)
        pair_seen, pair_near, keep = set(), {}, []
        split_sha, split_phash = set(), []
        for i, row in enumerate(cols):
            sha, q = row["image_sha256"], question_of(row["messages"])
            ph = row["phash"] if near_key is None else near_key(row)
            if sha in seen_sha:
                reason = "cross_split_exact_duplicate"
            elif seen_near.contains_near(ph):
                reason = "cross_split_near_duplicate"
            elif against is not None and against.contains_near(row["phash"]):
                reason = "cross_source_duplicate"
            elif (sha, q) in pair_seen:
                reason = "exact_duplicate_row"
            elif q in pair_near and pair_near[q].contains_near(ph):
                reason = "near_duplicate_row"
            else:
                reason = None
            if reason:
                dropped[(split, reason)] += 1
                continue
            keep.append(i)
            pair_seen.add((sha, q))
            pair_near.setdefault(q, new_index()).add(ph)
            if sha not in split_sha:
                split_sha.add(sha)
                split_phash.append(ph)
        # Only after the whole split: images shared by rows of the same split are fine.
        seen_sha |= split_sha
        for ph in split_phash:
            seen_near.add(ph)
        kept[split] = ds if len(keep) == len(ds) else ds.select(keep)
    return kept, dropped


def index_eval_images(dataset_dicts, max_distance: int = PHASH_NEAR_DISTANCE) -> NearDupIndex:
    """A NearDupIndex over the validation/test images of other built datasets (cross-source dedup)."""
    index = NearDupIndex(max_distance)
    for dd in dataset_dicts:
        for split in ("validation", "test"):
            if split in dd:
                for ph in dd[split]["phash"]:
                    index.add(ph)
    return index
