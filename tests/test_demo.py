"""The Space in spaces_demo/: its front matter and requirements as the Hub takes them, the image path (what the model
gets vs what the browser shows, memory), and the app itself launched as a subprocess on 127.0.0.1 with a tiny saved
model, driven through gradio_client (answers, abstentions, bad inputs, 20 concurrent users) and a real headless
Chromium via Playwright."""

import ast
import base64
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import types
import zlib
from concurrent.futures import wait
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "spaces_demo"
EXAMPLE = DEMO_DIR / "examples" / "invoice.png"
# The tiny model's answer to this example is saved as its abstain_answer: the example then makes it "say" the answer
# is not in the image (a trained model says "unanswerable").
SAID_SO_EXAMPLE, SAID_SO_QUESTION = DEMO_DIR / "examples" / "dialog.png", "How many files will be deleted?"
SAVED_THRESHOLD = 0.001  # written into the tiny model's generation_config.json; the app must pick it up
MAX_NEW_TOKENS = 8
NOT_FOUND = "Not found in the image"
REASONS = {  # = ABSTAIN_REASONS of the processor's remote code, which the page must show word for word
    "model_said_so": "the model said the answer is not in the image",
    "not_confident": "the model was not confident enough",
}
# The Hub's limits on the README front matter, and what the Hub refuses on upload (a short_description over 60
# characters): https://github.com/huggingface/hub-docs/blob/main/docs/hub/spaces-config-reference.md
HUB_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
HUB_SDKS = {"gradio", "docker", "static"}
HUB_SHORT_DESCRIPTION_MAX = 60
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def load_app_module():
    """spaces_demo/app.py as a module (it is a script, not a package); building the UI needs no model."""
    spec = importlib.util.spec_from_file_location("minillava_space_app", DEMO_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # gradio inspects component classes' source through their module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app():
    """The app module, generating as many tokens as the launched app; PIL's global bomb limit restored after."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    module = load_app_module()
    module.MAX_NEW_TOKENS = MAX_NEW_TOKENS
    yield module
    Image.MAX_IMAGE_PIXELS = pil_limit


def front_matter() -> dict:
    text = (DEMO_DIR / "README.md").read_text()
    assert text.startswith("---\n"), "README.md must open with the Space's YAML front matter"
    return yaml.safe_load(text.split("---\n")[1])


def requirement_lines() -> list[str]:
    lines = [line.split("#")[0].strip() for line in (DEMO_DIR / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line]


# ---- 1. It publishes as packaged --------------------------------------------------------------------------------


def test_front_matter_is_what_the_hub_accepts():
    meta = front_matter()
    assert len(meta["short_description"]) <= HUB_SHORT_DESCRIPTION_MAX, meta["short_description"]
    assert meta["sdk"] in HUB_SDKS and meta["colorFrom"] in HUB_COLORS and meta["colorTo"] in HUB_COLORS
    assert (DEMO_DIR / meta["app_file"]).is_file()
    assert meta["sdk_version"] == importlib.metadata.version("gradio"), "the Space must run the gradio we test"
    # A string: unquoted, YAML reads 3.10 as the float 3.1. Unset, the Hub picks its default (3.10 in its docs).
    python = meta.get("python_version")
    assert isinstance(python, str) and re.fullmatch(r"3\.\d+(\.\d+)?", python), python
    for name in ["gradio", *(Requirement(line).name for line in requirement_lines() if not line.startswith("-"))]:
        requires = importlib.metadata.metadata(name)["Requires-Python"] or ""
        assert SpecifierSet(requires).contains(python), f"{name} needs Python {requires}; python_version is {python}"


@pytest.mark.network
def test_requirements_install_cpu_torch_in_a_fresh_venv(tmp_path):
    """requirements.txt + the front matter's gradio, resolved by pip for an empty venv of the Space's Python.

    The honest closest thing to the Space's build on a machine that reaches PyPI but not PyTorch's CPU index: the
    index line is checked as text, then left out (pip would retry the unreachable host for minutes), and the pinned
    `torch==X+cpu` must resolve from what pip sees here (the same `+cpu` wheel, from this machine's local wheels).
    pip's `--dry-run --report` resolves the whole set and its metadata without installing (~15 s, mostly network):
    no conflicts, torch is the CPU build, and nothing CUDA (nvidia-*, triton) or torchvision comes along.
    """
    meta, lines = front_matter(), requirement_lines()
    assert f"--extra-index-url {PYTORCH_CPU_INDEX}" in lines
    torch_pin = next(Requirement(line) for line in lines if line.startswith("torch"))
    assert re.fullmatch(r"==\d+\.\d+\.\d+\+cpu", str(torch_pin.specifier)), f"pin CPU torch exactly: {torch_pin}"
    if ".".join(map(str, sys.version_info[:2])) != meta["python_version"]:
        pytest.skip(f"resolving for Python {meta['python_version']} needs that interpreter; this is {sys.version}")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join([*(line for line in lines if not line.startswith("-")), ""]))
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "--dry-run",
        "--quiet",
        "--retries",
        "1",
        "--report",
        report,
        "-r",
        requirements,
        f"gradio=={meta['sdk_version']}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert resolved["torch"] == str(torch_pin.specifier).removeprefix("=="), resolved["torch"]
    assert {"transformers", "gradio", "pillow", "numpy"} <= set(resolved)
    unwanted = [name for name in resolved if name.startswith(("nvidia-", "triton", "torchvision"))]
    assert not unwanted, f"a CPU Space would download these: {unwanted}"


def test_app_imports_nothing_from_the_repo_and_keeps_no_copy_of_the_confidence_code():
    tree = ast.parse((DEMO_DIR / "app.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"modeling_minillava", "processing", "data_scripts", "metrics", "run_sft", "run_eval"}
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not defined & {"answer_confidence", "should_abstain", "answer_logprobs", "is_abstained"}
    assert "log_softmax" not in (DEMO_DIR / "app.py").read_text()  # the confidence comes from the processor
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert "post_process_answers" in called


def test_examples_are_the_ones_make_examples_draws(app):
    spec = importlib.util.spec_from_file_location("minillava_space_examples", DEMO_DIR / "make_examples.py")
    drawn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drawn)
    assert drawn.EXAMPLES == app.EXAMPLES
    assert app.EXAMPLES[2] == (SAID_SO_EXAMPLE.name, SAID_SO_QUESTION)  # the browser test clicks it
    assert all((DEMO_DIR / "examples" / name).is_file() for name, _ in app.EXAMPLES)


# ---- The launched app -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height with almost no pixel data: what a decompression bomb looks like
    to Image.open, at no cost to build."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def tiny_model_dir(build, app, tmp_path_factory) -> Path:
    """A saved tiny model + processor (random projector: gibberish answers). Whitespace tokens are suppressed so the
    answers are visible text (the tiny LLM otherwise emits only newlines) and an abstention threshold is saved. Its
    abstention answer is what it says about SAID_SO_EXAMPLE, so that example makes it "say" the answer is not there.
    The first seed whose random model says different things about the two examples is used (deterministic)."""
    for seed in range(10):
        model, processor = build(seed=seed)
        tokenizer = processor.tokenizer
        eos = model.generation_config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [eos])
        blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i], skip_special_tokens=True).strip()]
        model.generation_config.suppress_tokens = [i for i in blank if i not in stop]
        model.generation_config.abstain_threshold = SAVED_THRESHOLD
        said = {}
        examples = ((EXAMPLE, "What is the total due on this invoice?"), (SAID_SO_EXAMPLE, SAID_SO_QUESTION))
        for path, question in examples:
            out, prompt_length, _ = app.generate_answer(model, processor, app.open_image(str(path)), question)
            said[path] = processor.post_process_answers(out, prompt_length, model.generation_config)[0]["answer"]
        if said[EXAMPLE] != said[SAID_SO_EXAMPLE]:
            break
    assert said[EXAMPLE] != said[SAID_SO_EXAMPLE], f"seeds 0-9: the tiny model says {said[EXAMPLE]!r} about both"
    model.generation_config.abstain_answer = said[SAID_SO_EXAMPLE]
    folder = tmp_path_factory.mktemp("space_model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def space(tiny_model_dir, tmp_path_factory):
    """`python spaces_demo/app.py` from a foreign cwd, with MODEL_ID set: (url, process, log path); killed after the
    module's tests."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("space_cwd")
    env = {
        **os.environ,
        "MODEL_ID": str(tiny_model_dir),
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
        "GRADIO_TEMP_DIR": str(workdir / "gradio"),
    }
    env.pop("PYTHONPATH", None)
    log_path = workdir / "app.log"
    with open(log_path, "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, DEMO_DIR / "app.py"], cwd=workdir, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url, log_path, timeout_s=60)
        yield types.SimpleNamespace(url=url, proc=proc, log=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def app_url(space) -> str:
    return space.url


def wait_until_up(proc: subprocess.Popen, url: str, log_path: Path, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"app.py not up after {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


# ---- 2. A display a non-expert reads at a glance ----------------------------------------------------------------


def result(answer="42", confidence=0.91, reason=None, threshold=0.6509804) -> dict:
    return {
        "answer": answer,
        "confidence": confidence,
        "num_tokens": 2,
        "abstained": reason is not None,
        "reason": reason,
        "threshold": threshold,
    }


def visible_text(markup: str) -> str:
    return re.sub(r"<[^>]+>", " ", markup)


def test_verdict_speaks_in_percent_and_plain_words(app):
    reasons = {**REASONS, "empty": "the model gave no answer"}
    answered = visible_text(app.render_verdict(result(), reasons))
    assert "Answer found" in answered and "Confidence 91%" in answered and "threshold 65%" in answered
    assert "0.65" not in answered and "0.91" not in answered and "geometric" not in answered.lower()
    unsure = visible_text(app.render_verdict(result(confidence=0.42, reason="not_confident"), reasons))
    assert NOT_FOUND in unsure and REASONS["not_confident"] in unsure and "Confidence 42%" in unsure
    # The model's own "unanswerable" with 0.91: not a 91%-confident answer, and no bar past the threshold.
    said = app.render_verdict(result("unanswerable", 0.91, "model_said_so"), reasons)
    assert NOT_FOUND in said and REASONS["model_said_so"] in said and "cannot find" in said
    assert "91%" not in said and "conf-fill" not in said
    assert app.percent(0.654, 0.651) == "65.4%" and app.percent(0.004) == "0.4%" and app.percent(1.0) == "100%"
    assert "Confidence" not in visible_text(app.render_verdict(None, reasons))  # no 0 before any question


def test_the_verdict_says_how_the_image_was_split(app, build):
    """One squashed tile by default; with AnyRes the grid the processor chose for this image and the placeholders it
    laid out (LLaVA-NeXT: tiles + the whole image as an overview)."""
    page = Image.new("RGB", (1240, 1754), "white")  # an A4 page, (width, height)
    readings = {}
    for name, kwargs in (("single", {}), ("anyres", {"max_tiles": 4})):
        model, processor = build(**kwargs)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Total?"}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[page], text=[text], return_tensors="pt")
        readings[name] = app.describe_reading(processor, inputs)
        expected = model.config.num_image_tokens if name == "single" else processor.plan_canvases([(1754, 1240)])[0][1]
        assert readings[name]["image_tokens"] == expected
    assert (readings["single"]["rows"], readings["single"]["cols"], readings["single"]["overview"]) == (1, 1, False)
    anyres = readings["anyres"]
    assert anyres["overview"] and anyres["rows"] * anyres["cols"] <= 4 and anyres["rows"] >= anyres["cols"]  # tall
    assert anyres["image_tokens"] > readings["single"]["image_tokens"]
    line = visible_text(app.render_verdict({**result(), "image_reading": anyres}, {**REASONS}))
    assert f"Read as {anyres['rows']}×{anyres['cols']} tiles + an overview, {anyres['image_tokens']:,}" in line


@pytest.mark.slow
def test_client_gets_answer_confidence_and_named_outputs(client):
    from gradio_client import handle_file

    returns = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/answer"]["returns"]
    assert [r["label"] for r in returns] == ["Answer", "Verdict", "Result"]  # no value_13 for a client to guess
    job = client.submit(handle_file(EXAMPLE), "What is the total due on this invoice?", api_name="/answer")
    answer, verdict, details = job.result(timeout=60)
    streamed = job.outputs()[:-1]
    assert streamed and all(update[2] is None for update in streamed)  # partial answers come before the result
    assert details["threshold"] == SAVED_THRESHOLD  # no threshold sent: the saved one applies
    assert not details["abstained"] and details["confidence"] > SAVED_THRESHOLD and answer == details["answer"]
    assert answer.strip() and answer != NOT_FOUND
    shown = re.search(r"Confidence ([\d.]+)%", visible_text(verdict))
    assert shown and abs(float(shown[1]) - 100 * details["confidence"]) <= 0.5 and "Answer found" in verdict


@pytest.mark.slow
def test_client_threshold_above_confidence_abstains_and_says_why(client):
    from gradio_client import handle_file

    answer, verdict, details = client.predict(handle_file(EXAMPLE), "What is the total?", 1.0, api_name="/answer")
    assert answer == NOT_FOUND and details["reason"] == "not_confident" and details["threshold"] == 1.0
    assert details["reason_text"] == REASONS["not_confident"] in verdict and "threshold 100%" in verdict


@pytest.mark.slow
def test_client_model_saying_unanswerable_is_not_shown_as_a_confident_answer(client):
    from gradio_client import handle_file

    answer, verdict, details = client.predict(handle_file(SAID_SO_EXAMPLE), SAID_SO_QUESTION, api_name="/answer")
    assert answer == NOT_FOUND and details["reason"] == "model_said_so" and REASONS["model_said_so"] in verdict
    assert "Confidence" not in verdict  # its confidence is in the word "unanswerable", not in an answer


# ---- 3. Rough edges: errors, threshold, memory, sources ----------------------------------------------------------


def _corrupt_png(path: Path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[:80])


QUESTION = "What is the total?"
BAD_INPUTS = {  # name -> (write the upload, "example" or None; question; threshold; expected message fragment)
    "not_an_image": (lambda p: p.write_text("name,total\nACME,42\n"), QUESTION, None, "not an image"),
    "corrupt_png": (_corrupt_png, QUESTION, None, "corrupt or truncated"),
    "huge_image": (lambda p: p.write_bytes(png_header_only(7_000, 7_000)), QUESTION, None, "too large"),
    "decompression_bomb": (lambda p: p.write_bytes(png_header_only(50_000, 50_000)), QUESTION, None, "too large"),
    "no_image": (None, QUESTION, None, "upload an image"),
    "empty_question": ("example", "   ", None, "type a question"),
    "long_question": ("example", "why " * 200, None, "too long"),
    "threshold_above_1": ("example", QUESTION, 5.0, "threshold must be a number from 0 to 1"),
    "threshold_below_0": ("example", QUESTION, -0.5, "threshold must be a number from 0 to 1"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_client_bad_inputs_get_clear_messages_and_one_log_line(client, space, tmp_path, case):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    write, question, threshold, message = BAD_INPUTS[case]
    upload = None
    if write == "example":
        upload = handle_file(EXAMPLE)
    elif write is not None:
        path = tmp_path / "upload.png"
        write(path)
        upload = handle_file(path)
    logged_before = space.log.stat().st_size
    args = (upload, question) if threshold is None else (upload, question, threshold)
    with pytest.raises(AppError, match=f"(?i){message}"):
        client.predict(*args, api_name="/answer")
    time.sleep(0.2)  # the log line is written before the reply; give the file system a moment anyway
    with open(space.log) as log:
        log.seek(logged_before)
        new_lines = [line for line in log.read().splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(new_lines), new_lines
    assert len(new_lines) == 1 and re.search(f"(?i)refused: .*{message}", new_lines[0]), new_lines


@pytest.mark.slow
def test_image_sources_are_upload_and_clipboard_only(app_url):
    config = httpx.get(f"{app_url}/config").json()
    image = next(c for c in config["components"] if c["props"].get("elem_id") == "image")
    assert image["props"]["sources"] == ["upload", "clipboard"]  # no webcam for screenshots


def test_large_images_are_downscaled_on_decode(app, tmp_path):
    photo = tmp_path / "photo.jpg"  # 24 MP: over the pixel limit as announced, decoded at 1/2 scale by Image.draft
    exif = Image.Exif()
    exif[0x0112] = 6  # the orientation must survive the downscale: the processor turns it upright
    Image.new("RGB", (6000, 4000), "white").save(photo, quality=60, exif=exif.tobytes())
    decoded = app.open_image(str(photo))
    assert max(decoded.size) == app.MAX_IMAGE_SIDE and decoded.getexif().get(0x0112) == 6
    page = tmp_path / "page.png"
    Image.new("RGBA", (3000, 2000), (0, 0, 0, 0)).save(page)
    decoded = app.open_image(str(page))
    assert decoded.size == (app.MAX_IMAGE_SIDE, 1024) and decoded.mode == "RGBA"


@pytest.mark.slow
def test_request_with_the_largest_image_stays_under_the_memory_budget(app, client, space, tmp_path):
    """Peak resident memory of the server during one request with a transparent PNG of MAX_IMAGE_PIXELS, measured by
    resetting the process's high-water mark (Linux /proc/PID/clear_refs) first."""
    from gradio_client import handle_file

    status = Path(f"/proc/{space.proc.pid}/status")
    if not status.exists():
        pytest.skip("needs Linux /proc to read the server's peak memory")
    side = math.isqrt(app.MAX_IMAGE_PIXELS)
    page = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(page)
    for y in range(0, side, 400):  # black bars on transparent: decodes to 4 bytes per pixel, downscales premultiplied
        draw.rectangle((100, y, side - 100, y + 50), fill=(0, 0, 0, 255))
    path = tmp_path / "largest.png"
    page.save(path, compress_level=1)

    def memory_mb(field: str) -> float:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read_text()).group(1)) / 1024

    Path(f"/proc/{space.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = memory_mb("VmRSS")
    details = client.predict(handle_file(path), "What does it say?", 0.0, api_name="/answer")[2]
    used = memory_mb("VmHWM") - before
    print(f"{side}x{side} RGBA request: +{used:.0f} MB peak (budget {app.IMAGE_MEMORY_BUDGET_MB} MB)")
    assert details["answer"] and used < app.IMAGE_MEMORY_BUDGET_MB


# ---- 4. The image reaches the model exactly as the user sees it --------------------------------------------------


def draw_page(size=(240, 120)) -> Image.Image:
    """An upright page with black text and an off-centre block: sideways, mirrored or inverted, it differs."""
    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    draw.text((10, 10), "TOTAL 42", font=ImageFont.load_default(size=28), fill="black")
    draw.rectangle((10, 60, 150, 112), fill=(60, 60, 60))
    return page


def transparent_png(path: Path) -> Image.Image:
    """Black text on transparent (alpha = darkness); on white it is the page."""
    grey = np.asarray(draw_page().convert("L"))
    rgba = np.zeros((*grey.shape, 4), np.uint8)
    rgba[..., 3] = 255 - grey
    Image.fromarray(rgba, "RGBA").save(path)
    alpha = rgba[..., 3:].astype(np.float64) / 255
    return Image.fromarray(np.round(255 * (1 - alpha).repeat(3, axis=2)).astype(np.uint8), "RGB")


def exif_rotated_jpeg(path: Path) -> Image.Image:
    """A phone photo: pixels stored sideways, EXIF orientation 6 (rotate 90° clockwise to show)."""
    stored = np.rot90(np.asarray(draw_page()), k=1)  # the upright page turned 90° counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as decoded:  # JPEG is lossy: the upright truth is the decoded pixels turned back
        return Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(decoded.convert("RGB")), k=-1)))


def grey16_png(path: Path) -> Image.Image:
    """A 16-bit greyscale scan: 8-bit levels v stored as v * 257."""
    grey = np.asarray(draw_page().convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(path)  # mode I;16
    return Image.fromarray((grey // 257).astype(np.uint8)).convert("RGB")


PREVIEW_CASES = {"transparent.png": transparent_png, "exif_rotated.jpg": exif_rotated_jpeg, "grey16.png": grey16_png}


@pytest.fixture(scope="module")
def preview_files(tmp_path_factory) -> dict[str, tuple[Path, Image.Image]]:
    """name -> (file as uploaded, upright RGB on white: what a browser shows for it)."""
    folder = tmp_path_factory.mktemp("previews")
    return {name: (folder / name, make(folder / name)) for name, make in PREVIEW_CASES.items()}


@pytest.fixture(scope="module")
def space_processor(app, tiny_model_dir):
    """The processor as the Space loads it: from the saved folder, through the model's remote code."""
    return app.load_model(str(tiny_model_dir))[1]


def model_pixels(processor, image) -> np.ndarray:
    """pixel_values the model gets for `image` through the processor's own call (its loader, then its resize)."""
    return processor(images=[image], text=[processor.image_token], return_tensors="pt")["pixel_values"][0].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", PREVIEW_CASES)
def test_model_sees_the_image_as_the_preview_shows_it(app, space_processor, preview_files, name):
    path, preview = preview_files[name]
    decoded = app.open_image(str(path))  # what the app hands the processor
    got, expected = model_pixels(space_processor, decoded), model_pixels(space_processor, preview)
    assert got.shape == expected.shape
    # pixel_values are normalised to [-1, 1]: 0.02 is under 3 grey levels (JPEG and resampling rounding).
    assert np.abs(got - expected).max() < 0.05 and np.abs(got - expected).mean() < 0.02, name
    plain = np.asarray(Image.open(path).convert("RGB").resize(preview.size))  # what Image.convert("RGB") made of it
    assert np.abs(plain.astype(int) - np.asarray(preview, dtype=int)).mean() > 30  # the case is not trivial


@pytest.mark.slow
def test_oversized_upload_is_refused_and_no_other_files_are_served(app_url, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (21 * 1024 * 1024))
    with open(big, "rb") as f:
        response = httpx.post(f"{app_url}/gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    for path in (DEMO_DIR / "app.py", ROOT / "setup.py", Path("/etc/passwd")):
        assert httpx.get(f"{app_url}/gradio_api/file={path}").status_code in (403, 404), path
    assert httpx.get(f"{app_url}/gradio_api/file={EXAMPLE}").status_code == 200  # its own example images only


def call_answer_raw(app_url: str, image_payload: dict) -> str:
    """POST /answer over the plain HTTP API (gradio_client would upload a local path itself); the SSE reply text."""
    data = {"data": [image_payload, "What does it say?", 0.0]}
    event_id = httpx.post(f"{app_url}/gradio_api/call/answer", json=data, timeout=10).json()["event_id"]
    return httpx.get(f"{app_url}/gradio_api/call/answer/{event_id}", timeout=60).text


@pytest.mark.slow
def test_api_cannot_make_the_app_read_files_outside_its_uploads(app_url):
    with open(EXAMPLE, "rb") as f:
        uploaded = httpx.post(f"{app_url}/gradio_api/upload", files={"files": ("invoice.png", f, "image/png")}).json()
    meta = {"_type": "gradio.FileData"}
    assert "event: complete" in call_answer_raw(app_url, {"path": uploaded[0], "meta": meta})  # the control
    for path in (EXAMPLE, ROOT / "setup.py", Path("/etc/passwd")):  # server paths a caller names: refused by gradio
        reply = call_answer_raw(app_url, {"path": str(path), "meta": meta})
        assert "event: error" in reply and "event: complete" not in reply, (path, reply)


@pytest.mark.slow
def test_twenty_concurrent_requests_are_all_answered(client):
    from gradio_client import handle_file

    questions = [f"Question {i}: what is the total due?" for i in range(20)]
    start = time.monotonic()
    jobs = [client.submit(handle_file(EXAMPLE), q, 0.0, api_name="/answer") for q in questions]
    done, pending = wait([job.future for job in jobs], timeout=90)
    assert not pending, f"{len(pending)} of 20 requests unanswered after 90 s"
    for job in jobs:
        answer, _, details = job.result()
        assert answer.strip() and 0.0 <= details["confidence"] <= 1.0
    print(f"20 concurrent requests answered in {time.monotonic() - start:.1f} s")


# ---- 5. In a real browser ---------------------------------------------------------------------------------------


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must run scripts/install_browser.sh first.")
        pytest.skip("chromium not installed (bash scripts/install_browser.sh); required when CI is set")
    return chromium


@pytest.fixture(scope="module")
def browser():
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    """The app in a fresh tab, ready for input."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(app_url)
    page.locator("#ask").wait_for(timeout=30_000)
    yield page
    page.close()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    """Where screenshots go: $MINILLAVA_TEST_ARTEFACTS (CI sets it to keep them) or a pytest temporary folder."""
    folder = Path(os.environ.get("MINILLAVA_TEST_ARTEFACTS") or tmp_path_factory.mktemp("artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def click_example(page, row: int):
    page.locator(f"#examples [data-testid=dataset-cell-{row}-1]").click()


def wait_for_verdict(page, text: str):
    page.locator("#verdict", has_text=text).wait_for(timeout=30_000)


def answer_text(page) -> str:
    return page.locator("#answer textarea").input_value()


@pytest.mark.browser
def test_browser_example_click_runs_and_shows_an_answer(page, artefacts):
    click_example(page, 0)  # the invoice: fills the inputs AND runs
    wait_for_verdict(page, "Answer found")
    assert page.locator("#question textarea").input_value() == "What is the total due on this invoice?"
    answer, verdict = answer_text(page), page.locator("#verdict").inner_text()
    assert answer.strip() and answer != NOT_FOUND
    assert re.search(r"Confidence [\d.]+%", verdict) and "threshold 0.1%" in verdict
    screenshot = artefacts / "demo_browser.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000


@pytest.mark.browser
def test_browser_clears_the_stale_result_on_upload_and_on_error(page):
    click_example(page, 0)
    wait_for_verdict(page, "Answer found")
    page.locator("#image input[type=file]").set_input_files(str(SAID_SO_EXAMPLE))  # a new image
    page.wait_for_function("() => document.querySelector('#answer textarea').value === ''", timeout=10_000)
    assert "Confidence" not in page.locator("#verdict").inner_text()
    page.locator("#question textarea").fill(SAID_SO_QUESTION)
    page.locator("#ask").click()
    wait_for_verdict(page, NOT_FOUND)  # the tiny model "says" it is not in this one
    page.locator("#question textarea").fill("")
    page.locator("#ask").click()  # no question: the page says so and keeps no answer from before
    page.get_by_text("Please type a question about the image.").first.wait_for(timeout=10_000)
    page.wait_for_function("() => document.querySelector('#answer textarea').value === ''", timeout=10_000)
    assert NOT_FOUND not in page.locator("#verdict").inner_text()


@pytest.mark.browser
def test_browser_shows_why_an_answer_is_withheld(page, artefacts):
    click_example(page, 2)  # the dialog: the tiny model's saved abstention answer
    wait_for_verdict(page, REASONS["model_said_so"])
    verdict = page.locator("#verdict").inner_text()
    assert NOT_FOUND in verdict and "Confidence" not in verdict and answer_text(page) == NOT_FOUND
    click_example(page, 0)
    wait_for_verdict(page, "Answer found")
    threshold_box = page.locator("#threshold input[type=number]")
    threshold_box.fill("0.9")
    threshold_box.press("Enter")  # the slider re-decides the last answer without running the model again
    wait_for_verdict(page, REASONS["not_confident"])
    verdict = page.locator("#verdict").inner_text()
    assert NOT_FOUND in verdict and "threshold 90%" in verdict and answer_text(page) == NOT_FOUND
    page.screenshot(path=str(artefacts / "demo_browser_abstained.png"), full_page=True)
    # Long answers wrap inside their column: a 400-character word in the answer and in the verdict.
    overflow = page.evaluate(
        """() => {
            const long = 'x'.repeat(400);
            const box = document.querySelector('#answer textarea');
            box.value = long;
            document.querySelector('#verdict .verdict-guess').textContent = long;
            const guess = document.querySelector('#verdict');
            return [box.scrollWidth - box.clientWidth, guess.scrollWidth - guess.clientWidth,
                    document.documentElement.scrollWidth - window.innerWidth];
        }"""
    )
    assert all(pixels <= 0 for pixels in overflow), overflow


@pytest.mark.browser
def test_browser_preview_is_what_the_model_gets(browser, app, space_processor, preview_files):
    """The browser's own rendering of each file (EXIF applied, transparency on the white page, 16 bits shown as 8)
    is the preview; the model's pixel_values for the app's decoded image must match it."""
    tab = browser.new_page(viewport={"width": 800, "height": 600})
    try:
        for name, (path, _) in preview_files.items():
            mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
            data = base64.b64encode(path.read_bytes()).decode()
            tab.set_content(f"<body style='margin:0;background:#fff'><img id='shown' src='data:{mime};base64,{data}'>")
            tab.wait_for_function("() => document.querySelector('#shown').complete")
            shown = Image.open(io.BytesIO(tab.locator("#shown").screenshot())).convert("RGB")
            decoded = app.open_image(str(path))
            got, expected = model_pixels(space_processor, decoded), model_pixels(space_processor, shown)
            assert np.abs(got - expected).mean() < 0.02 and np.abs(got - expected).max() < 0.1, name
    finally:
        tab.close()
