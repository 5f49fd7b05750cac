"""The Space in spaces_demo/: launched as a subprocess on 127.0.0.1 with a tiny saved model, driven through
gradio_client (answers, bad inputs, 20 concurrent users) and a real headless Chromium via Playwright."""

import ast
import importlib.util
import io
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import wait
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "spaces_demo"
EXAMPLE = DEMO_DIR / "examples" / "invoice.png"
SAVED_THRESHOLD = 0.001  # written into the tiny model's generation_config.json; the app must pick it up
ABSTAIN_MESSAGE = "I can't find that in the image."
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip


def load_app_module():
    """spaces_demo/app.py as a module (it is a script, not a package); building the UI needs no model."""
    spec = importlib.util.spec_from_file_location("minillava_space_app", DEMO_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # gradio inspects component classes' source through their module
    spec.loader.exec_module(module)
    return module


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
def tiny_model_dir(build, tmp_path_factory) -> Path:
    """A saved tiny model + processor (random projector: gibberish answers). Whitespace tokens are suppressed so the
    answers are visible text (the tiny LLM otherwise emits only newlines), and an abstention threshold is saved."""
    model, processor = build(seed=0)
    tokenizer = processor.tokenizer
    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos])
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i], skip_special_tokens=True).strip()]
    model.generation_config.suppress_tokens = [i for i in blank if i not in stop]
    model.generation_config.abstain_threshold = SAVED_THRESHOLD
    folder = tmp_path_factory.mktemp("space_model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def app_url(tiny_model_dir, tmp_path_factory):
    """`python spaces_demo/app.py` from a foreign cwd, with MODEL_ID set; killed after the module's tests."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("space_cwd")
    env = {
        **os.environ, "MODEL_ID": str(tiny_model_dir), "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
        "MAX_NEW_TOKENS": "8", "GRADIO_TEMP_DIR": str(workdir / "gradio"),
    }  # fmt: skip
    env.pop("PYTHONPATH", None)
    log_path = workdir / "app.log"
    with open(log_path, "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, DEMO_DIR / "app.py"], cwd=workdir, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url, log_path, timeout_s=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def test_app_imports_nothing_from_the_repo():
    tree = ast.parse((DEMO_DIR / "app.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"modeling_minillava", "processing", "data_scripts", "metrics", "run_sft", "run_eval"}
    requirements = (DEMO_DIR / "requirements.txt").read_text()
    for package in ("transformers", "torch", "gradio", "pillow"):
        assert package in requirements.lower()
    front_matter = (DEMO_DIR / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front_matter and "app_file: app.py" in front_matter


def test_confidence_is_the_geometric_mean_token_probability_without_the_stop_token():
    app = load_app_module()
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    logits = tuple(p.log().unsqueeze(0) + 3.0 for p in probs)  # any shift of the logits gives the same probabilities
    sequence = torch.tensor([0, 1, 2])  # token 2 is the stop token: excluded
    assert app.answer_confidence(sequence, logits, {2}) == pytest.approx(math.sqrt(0.5 * 0.8))
    assert app.answer_confidence(torch.tensor([2]), logits[:1], {2}) == 0.0  # nothing generated
    assert app.should_abstain("Unanswerable. ", 0.9, 0.5) and app.should_abstain("42", 0.4, 0.5)
    assert not app.should_abstain("42", 0.6, 0.5) and app.should_abstain("  ", 0.9, 0.0)


def test_confidence_and_abstention_match_the_evaluation_harness():
    harness = pytest.importorskip("metrics.confidence")
    app = load_app_module()
    generator = torch.Generator().manual_seed(0)
    logits = tuple(torch.randn(1, 50, generator=generator) * 3 for _ in range(6))
    for sequence in ([4, 9, 9, 1, 0, 0], [1, 0, 0, 0, 0, 0], [7, 3, 5, 8, 2, 6]):  # stop id 1: early, first, never
        expected = harness.confidence_from_logprobs(harness.answer_logprobs(torch.tensor([sequence]), logits, {1})[0])
        assert app.answer_confidence(torch.tensor(sequence), logits, {1}) == pytest.approx(expected)
    assert harness.ABSTAIN_ANSWER == app.ABSTAIN_ANSWER
    for answer in ("unanswerable", " Unanswerable!", "", "42", "unanswerable because"):
        for confidence in (0.3, 0.7):
            assert app.should_abstain(answer, confidence, 0.5) == harness.is_abstained(answer, confidence, 0.5)


def test_client_gets_answer_and_confidence(client):
    from gradio_client import handle_file

    job = client.submit(handle_file(EXAMPLE), "What is the total due on this invoice?", api_name="/answer")
    answer, confidence, bar, details, *_ = job.result(timeout=60)
    streamed = job.outputs()[:-1]
    assert streamed and all(update[1] is None for update in streamed)  # partial answers come before the confidence
    assert 0.0 <= confidence <= 1.0 and confidence > SAVED_THRESHOLD  # no threshold sent: the saved one applies
    assert answer.strip() and answer != ABSTAIN_MESSAGE
    assert answer in details  # the raw answer is shown as well
    assert f"Confidence: {confidence:.4f}" in bar and "answered" in bar


def test_client_threshold_above_confidence_abstains(client):
    from gradio_client import handle_file

    answer, confidence, bar, details, *_ = client.predict(
        handle_file(EXAMPLE), "What is the total due on this invoice?", 1.0, api_name="/answer"
    )
    assert answer == ABSTAIN_MESSAGE and 0.0 <= confidence < 1.0
    assert "abstained" in bar and "threshold 1," in bar


def _corrupt_png(path: Path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[:80])


BAD_INPUTS = {  # name -> (write the upload or None, question, expected message fragment)
    "not_an_image": (lambda p: p.write_text("name,total\nACME,42\n"), "What is the total?", "not an image"),
    "corrupt_png": (_corrupt_png, "What is the total?", "corrupt or truncated"),
    "huge_image": (lambda p: p.write_bytes(png_header_only(7_000, 7_000)), "What is the total?", "too large"),
    "decompression_bomb": (lambda p: p.write_bytes(png_header_only(50_000, 50_000)), "What?", "too large"),
    "no_image": (None, "What is the total?", "upload an image"),
    "empty_question": ("example", "   ", "type a question"),
    "long_question": ("example", "why " * 200, "too long"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_client_bad_inputs_get_clear_messages(client, tmp_path, case):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    write, question, message = BAD_INPUTS[case]
    upload = None
    if write == "example":
        upload = handle_file(EXAMPLE)
    elif write is not None:
        path = tmp_path / "upload.png"
        write(path)
        upload = handle_file(path)
    with pytest.raises(AppError, match=f"(?i){message}"):
        client.predict(upload, question, api_name="/answer")


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


def test_api_cannot_make_the_app_read_files_outside_its_uploads(app_url):
    with open(EXAMPLE, "rb") as f:
        uploaded = httpx.post(f"{app_url}/gradio_api/upload", files={"files": ("invoice.png", f, "image/png")}).json()
    meta = {"_type": "gradio.FileData"}
    assert "event: complete" in call_answer_raw(app_url, {"path": uploaded[0], "meta": meta})  # the control
    for path in (EXAMPLE, ROOT / "setup.py", Path("/etc/passwd")):  # server paths a caller names: refused by gradio
        reply = call_answer_raw(app_url, {"path": str(path), "meta": meta})
        assert "event: error" in reply and "event: complete" not in reply, (path, reply)


def test_twenty_concurrent_requests_are_all_answered(client):
    from gradio_client import handle_file

    questions = [f"Question {i}: what is the total due?" for i in range(20)]
    start = time.monotonic()
    jobs = [client.submit(handle_file(EXAMPLE), q, 0.0, api_name="/answer") for q in questions]
    done, pending = wait([job.future for job in jobs], timeout=90)
    assert not pending, f"{len(pending)} of 20 requests unanswered after 90 s"
    for job in jobs:
        answer, confidence, *_ = job.result()
        assert answer.strip() and 0.0 <= confidence <= 1.0
    print(f"20 concurrent requests answered in {time.monotonic() - start:.1f} s")


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must run scripts/install_browser.sh first.")
        pytest.skip("chromium not installed (bash scripts/install_browser.sh); required when CI is set")
    return chromium


def test_browser_upload_ask_and_read_answer(app_url, tmp_path_factory):
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    artefacts = Path(os.environ.get("MINILLAVA_TEST_ARTEFACTS") or tmp_path_factory.mktemp("artefacts"))
    artefacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(app_url)
            page.locator("#ask").wait_for(timeout=30_000)
            page.locator("#image input[type=file]").set_input_files(str(EXAMPLE))
            page.locator("#image img").first.wait_for(timeout=15_000)
            page.locator("#question textarea").fill("What is the total due on this invoice?")
            page.locator("#ask").click()
            page.locator("#confidence-text").wait_for(timeout=30_000)
            answer = page.locator("#answer textarea").input_value()
            confidence = float(page.locator("#confidence input").input_value())
            bar_text = page.locator("#confidence-text").inner_text()
            page.screenshot(path=str(artefacts / "demo_browser.png"), full_page=True)
            threshold_box = page.locator("#threshold input[type=number]")
            threshold_box.fill("1")
            threshold_box.press("Enter")  # the slider re-decides the last answer without running the model again
            page.wait_for_function(
                "m => document.querySelector('#answer textarea').value === m", arg=ABSTAIN_MESSAGE, timeout=10_000
            )
            page.screenshot(path=str(artefacts / "demo_browser_abstained.png"), full_page=True)
            page.locator("#question textarea").fill("")
            page.locator("#ask").click()  # no question: the page must say so
            page.get_by_text("Please type a question about the image.").first.wait_for(timeout=10_000)
        finally:
            browser.close()
    print(f"screenshot: {artefacts / 'demo_browser.png'}")
    assert answer.strip() and answer != ABSTAIN_MESSAGE
    assert 0.0 <= confidence <= 1.0 and f"Confidence: {confidence:.4f}" in bar_text
    assert (artefacts / "demo_browser.png").stat().st_size > 10_000
