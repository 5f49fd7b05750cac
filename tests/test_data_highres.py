"""The high-resolution synthetic variant: schema and declared sizes, determinism, and the property it exists for:
each answer is drawn at its recorded small size, unreadable when the whole image is squashed to the tower size and
readable in the tiles of the AnyRes grid (checked from the layout and by resizing the real pixels)."""

import io
import json
import math

import datasets
import numpy as np
import pytest
from PIL import Image, ImageDraw
from transformers.image_processing_utils import select_best_resolution

from data_scripts import make_synthetic, synth_highres
from data_scripts.schema import ABSTAIN_ANSWER, load_dataset_dir, load_manifest, validate_row
from data_scripts.synth_canvas import font

N, TILE = 48, 384


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("highres") / "seed0"
    manifest = make_synthetic.build_synthetic(str(out), n=N, seed=0, num_proc=2, variant="highres", tile_size=TILE)
    dd = load_dataset_dir(str(out))
    undecoded = datasets.List(datasets.Image(decode=False))  # the stored PNG bytes, so sha256 and bytes can be checked
    return out, manifest, [r for s in dd for r in dd[s].cast_column("images", undecoded)]


def decode(row) -> Image.Image:
    return Image.open(io.BytesIO(row["images"][0]["bytes"]))


def grey(rgb) -> int:
    return Image.new("RGB", (1, 1), tuple(rgb)).convert("L").getpixel((0, 0))


def test_rows_follow_schema_sizes_and_manifest(built):
    out, manifest, rows = built
    assert len(rows) == N and manifest["deduplicated"] == {} and load_manifest(str(out)) == manifest
    assert manifest["converter"] == "synthetic_highres" and manifest["variant"] == "highres"
    assert manifest["tile_size"] == TILE and set(manifest["kinds"]) == {"page", "dashboard", "phone"}
    assert manifest["image_sizes"] == {"page": [1240, 1754], "dashboard": [2400, 1080], "phone": [1080, 2400]}
    assert sum(manifest["tasks"].values()) == N and set(manifest["tasks"]) == {"field_lookup", "ui_label", "abstain"}
    declared_ratio = {"page": math.sqrt(2), "dashboard": 1080 / 2400, "phone": 2400 / 1080}  # height / width
    for r in rows:
        meta = json.loads(r["meta"])
        assert validate_row(r) == [] and r["id"] == f"synthetic_highres-0-{meta['index']:06d}"
        width, height = decode(r).size
        assert [width, height] == manifest["image_sizes"][meta["kind"]]
        assert height / width == pytest.approx(declared_ratio[meta["kind"]], rel=2e-3)
        assert decode(r).mode == ("L" if meta["kind"] == "page" else "RGB")
        qtype, task = r["question_type"], meta["task"]
        assert (qtype, task) in {("key_value", "field_lookup"), ("extraction", "field_lookup")} | {
            ("extraction", "ui_label"),
            ("unanswerable", "abstain"),
        }
        assert meta["grid"] == manifest["text_plan"][meta["kind"]]["grid_cols_rows"]


def test_answers_derive_from_fields_and_abstention_is_absent(built):
    _, _, rows = built
    for r in rows:
        meta, answer = json.loads(r["meta"]), r["messages"][1]["content"][0]["text"]
        assert make_synthetic.derive_answer(meta["fields"], r["question_type"], meta["evidence"]) == answer
        if r["answerable"]:
            assert answer in meta["texts"] and meta["answer_drawn"] is not None
        else:
            assert answer == ABSTAIN_ANSWER and meta["answer_drawn"] is None
            assert make_synthetic.resolve(meta["fields"], meta["evidence"]) is None
    share = sum(not r["answerable"] for r in rows) / len(rows)
    assert 0.1 <= share <= 0.45, share


def measured_cap_height(size: int) -> int:
    """Height in pixel rows of an 'H' rendered at `size`, measured from ink, not from font metrics."""
    img = Image.new("L", (4 * size, 4 * size), 255)
    ImageDraw.Draw(img).text((size, size), "H", font=font(size), fill=0)
    return int((np.asarray(img) < 128).any(axis=1).sum())


def rendered_alone(row, drawn) -> np.ndarray:
    """The answer drawn by itself at the recorded position, size and colours, cropped to the recorded box."""
    image = decode(row)
    solo = Image.new("RGB", image.size, tuple(drawn["bg"]))
    ImageDraw.Draw(solo).text(
        tuple(drawn["xy"]), row["answers"][0], font=font(drawn["size"]), fill=tuple(drawn["fill"])
    )
    return np.asarray(solo.convert(image.mode).crop(drawn["box"]))


def test_answer_is_drawn_in_its_box_at_the_recorded_size(built):
    _, _, rows = built
    answerable = [r for r in rows if r["answerable"]]
    assert len(answerable) >= N // 2
    for r in answerable:
        meta = json.loads(r["meta"])
        drawn = meta["answer_drawn"]
        crop = np.asarray(decode(r).crop(drawn["box"]))
        # Pixel-identical to the answer rendered alone: right text, right size, nothing else inside the box.
        np.testing.assert_array_equal(crop, rendered_alone(r, drawn))
        ink = np.abs(crop.astype(int) - (grey(drawn["bg"]) if crop.ndim == 2 else np.array(drawn["bg"]))) > 60
        ink = ink if ink.ndim == 2 else ink.any(axis=2)
        assert ink.sum() >= 5 * len(r["answers"][0].replace(" ", "")), "the recorded box holds (almost) no ink"
        assert ink.any(axis=1).sum() >= meta["cap_px"] - 1  # capitals/digits at least cap-high
        assert drawn["size"] == meta["font_size"] and measured_cap_height(drawn["size"]) == meta["cap_px"]


@pytest.mark.parametrize("tile_size", [384, 128])
def test_cap_height_below_2px_squashed_above_6px_in_tiles(tile_size):
    """From the layout: cap height x the scale each view applies, the grid being the one LLaVA-NeXT's own rule
    (transformers' select_best_resolution) picks among grids of at most MAX_TILES tiles."""
    for kind, (width, height) in synth_highres.LAYOUTS.items():
        plan = synth_highres.text_plan(kind, tile_size)
        grids = [(c, r) for c in range(1, 13) for r in range(1, 13) if c * r <= synth_highres.MAX_TILES]
        best = select_best_resolution((height, width), [(r * tile_size, c * tile_size) for c, r in grids])
        assert plan.grid == (best[1] // tile_size, best[0] // tile_size)
        cap = measured_cap_height(plan.font_size)
        squashed = cap * min(tile_size / width, tile_size / height)  # squash: each axis to tile_size
        tiled = cap * min(plan.grid[0] * tile_size / width, plan.grid[1] * tile_size / height)  # AnyRes keeps aspect
        assert squashed < 2.0 and tiled > 6.0, (kind, tile_size, cap, squashed, tiled)
        assert (squashed, tiled) == pytest.approx((plan.squashed_px, plan.tiled_px))


def answer_rows_at_half_contrast(image, erased, size, drawn) -> int:
    """Pixel rows where the answer still changes the resized image by >= half its contrast (bicubic, as SigLIP's
    image processor resizes): the answer's height as the tower sees it, isolated from everything around it."""
    a = np.asarray(image.convert("L").resize(size, Image.BICUBIC), np.float32)
    b = np.asarray(erased.convert("L").resize(size, Image.BICUBIC), np.float32)
    contrast = abs(grey(drawn["fill"]) - grey(drawn["bg"]))
    return int((np.abs(a - b).max(axis=1) >= contrast / 2).sum())


def test_resized_pixels_lose_the_answer_squashed_and_keep_it_in_tiles(built):
    _, _, rows = built
    seen = set()
    for r in rows:
        meta = json.loads(r["meta"])
        if not r["answerable"]:
            continue
        image, drawn, (cols, grid_rows) = decode(r), meta["answer_drawn"], meta["grid"]
        erased = image.copy()
        fill = grey(drawn["bg"]) if image.mode == "L" else tuple(drawn["bg"])
        ImageDraw.Draw(erased).rectangle(drawn["box"], fill=fill)  # the box is uniform background but for the answer
        w, h = image.size
        scale = min(cols * TILE / w, grid_rows * TILE / h)
        tiled = (min(math.ceil(w * scale), cols * TILE), min(math.ceil(h * scale), grid_rows * TILE))
        assert answer_rows_at_half_contrast(image, erased, (TILE, TILE), drawn) <= 1, r["id"]
        assert answer_rows_at_half_contrast(image, erased, tiled, drawn) >= 6, r["id"]
        seen.add(meta["task"])
    assert seen == {"field_lookup", "ui_label"}


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    _, manifest, rows = built
    again = make_synthetic.build_synthetic(
        str(tmp_path / "a"), n=N, seed=0, num_proc=1, variant="highres", tile_size=TILE
    )  # one process instead of two: rows depend on (seed, index) only
    assert again["fingerprint"] == manifest["fingerprint"]
    first = make_synthetic.make_highres_sample(0, 7)
    assert first == make_synthetic.make_highres_sample(0, 7)
    assert first["images"][0]["bytes"] == next(r for r in rows if r["id"] == first["id"])["images"][0]["bytes"]
    assert make_synthetic.make_highres_sample(1, 7)["image_sha256"] != first["image_sha256"]
    assert make_synthetic.make_highres_sample(0, 7, tile_size=128)["image_sha256"] != first["image_sha256"]


def test_cli_and_bad_settings(tmp_path):
    manifest = make_synthetic.main(
        ["--out", str(tmp_path / "cli"), "--n", "6", "--seed", "2", "--num_proc", "1"]
        + ["--variant", "highres", "--tile_size", "128"]
    )
    assert manifest["tile_size"] == 128 and manifest["seed"] == 2 and manifest["converter"] == "synthetic_highres"
    assert manifest["text_plan"]["page"]["font_size"] > 3 * synth_highres.text_plan("page", 384).font_size
    with pytest.raises(ValueError, match="--variant 'huge'"):
        make_synthetic.build_synthetic(str(tmp_path / "x"), n=4, variant="huge")
    with pytest.raises(ValueError, match="--tile_size 8"):
        make_synthetic.build_synthetic(str(tmp_path / "x"), n=4, variant="highres", tile_size=8)
    # A 2x2 grid only doubles the resolution: no font is < 2 px squashed and > 6.5 px tiled; the error says so.
    with pytest.raises(ValueError, match="raise max_tiles"):
        synth_highres.text_plan("page", 384, max_tiles=4)
