"""Mini-LLaVA demo: ask a question about a document or UI screenshot; get a streamed answer, a confidence and an
abstention when the model is unsure. Runs as a Hugging Face Space: it loads the model by id or path with the
AutoClasses + trust_remote_code and imports nothing from the Mini-LLaVA repo. Usage: MODEL_ID=... python app.py
"""

import html
import math
import os
import threading
import warnings
from pathlib import Path

import gradio as gr
import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
# Where the repo's offline default run saves its final model; used when MODEL_ID is unset and the folder exists, so
# `python spaces_demo/app.py` works right after that run (a Space sets MODEL_ID instead).
LOCAL_DEFAULT_MODEL = HERE.parent / "outputs" / "offline" / "final"
# = data_scripts/schema.py ABSTAIN_ANSWER; hard-coded because a Space imports nothing from the repo. The model folder
# may override it (`abstain_answer` in generation_config.json, where run_eval.py saves it, or config.json).
ABSTAIN_ANSWER = "unanswerable"
ABSTAIN_MESSAGE = "I can't find that in the image."
EXAMPLES = [  # (file in examples/, question); drawn by make_examples.py
    ("invoice.png", "What is the total due on this invoice?"),
    ("login.png", "What is written on the blue button?"),
    ("dialog.png", "How many files will be deleted?"),
]

MAX_QUESTION_CHARS = 500
MAX_IMAGE_PIXELS = 40_000_000  # ~6300 x 6300; PIL raises on anything over twice that, we refuse anything over it
MAX_FILE_SIZE = "20mb"  # enforced by gradio's upload route before the file reaches us
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # PIL opens more (EPS, PSD...): no reason to try
MAX_NEW_TOKENS = int(os.environ.get("MAX_NEW_TOKENS", "32"))
CONCURRENCY = int(os.environ.get("DEMO_CONCURRENCY", "1"))  # generations at once; the rest wait in the queue
QUEUE_SIZE = int(os.environ.get("DEMO_QUEUE_SIZE", "64"))
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def resolve_model() -> tuple[str, str | None]:
    """(model id or path, revision) from MODEL_ID / MODEL_REVISION, else the local default model folder."""
    model_id = os.environ.get("MODEL_ID")
    if not model_id:
        if not (LOCAL_DEFAULT_MODEL / "config.json").exists():
            raise SystemExit(
                f"No model: set MODEL_ID to a Hub id or a local model folder (nothing at {LOCAL_DEFAULT_MODEL}, "
                "where the offline default run saves its model)."
            )
        model_id = str(LOCAL_DEFAULT_MODEL)
    return model_id, os.environ.get("MODEL_REVISION") or None


def load_model(model_id: str, revision: str | None = None):
    """Model + processor through the AutoClasses and the model's own remote code; eval mode."""
    kwargs = {"trust_remote_code": True, "revision": revision}
    model = AutoModelForImageTextToText.from_pretrained(model_id, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(model_id, **kwargs)
    return model, processor


def saved_threshold(model) -> float:
    """The abstention threshold fitted by the evaluation harness (generation_config, else config), 0.0 if none."""
    value = getattr(model.generation_config, "abstain_threshold", None)
    if value is None:
        value = getattr(model.config, "abstain_threshold", None)
    return float(value) if value is not None else 0.0


def open_image(upload: dict | str | None) -> Image.Image:
    """Uploaded file (gradio's un-preprocessed image payload, or a path) -> PIL image, or a gr.Error that says what is
    wrong with it. Gradio has already checked that the path lies in its upload cache."""
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not path:
        raise gr.Error("Please upload an image (a document or UI screenshot).")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # over MAX_IMAGE_PIXELS: refuse, not warn
        try:
            with Image.open(path, formats=IMAGE_FORMATS) as probe:
                probe.verify()  # structure and checksums, without decoding the pixels
            with Image.open(path, formats=IMAGE_FORMATS) as image:  # verify() leaves the image unusable: reopen
                image.load()
                # As uploaded: the processor makes it upright RGB (EXIF, transparency on white, 16-bit scaled).
                return image.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise gr.Error(
                f"This image is too large: at most {MAX_IMAGE_PIXELS // 1_000_000} million pixels. "
                "Please downscale it or crop the part you are asking about."
            ) from None
        except UnidentifiedImageError:
            raise gr.Error(
                f"This file is not an image we can read. Please upload a {', '.join(IMAGE_FORMATS)} file."
            ) from None
        except (OSError, SyntaxError, ValueError):  # truncated data, bad checksums, broken headers
            raise gr.Error(
                "This image file is corrupt or truncated and cannot be read; please upload it again."
            ) from None


def check_question(question: str | None) -> str:
    question = (question or "").strip()
    if not question:
        raise gr.Error("Please type a question about the image.")
    if len(question) > MAX_QUESTION_CHARS:
        raise gr.Error(f"The question is too long ({len(question)} characters); keep it under {MAX_QUESTION_CHARS}.")
    return question


def answer_confidence(sequence: torch.Tensor, logits: tuple[torch.Tensor, ...], stop_ids: set[int]) -> float:
    """exp(mean log-prob of the answer tokens up to the first stop token): the geometric-mean token probability, as
    the evaluation harness (metrics/confidence.py) computes it. `sequence`: [T] new tokens; `logits`: T tensors [1, V],
    the RAW logits (`output_logits=True`) so logits processors never change the confidence. 0.0 if empty."""
    logprobs = []
    for token, step_logits in zip(sequence.tolist(), logits):
        if token in stop_ids:
            break
        logprobs.append(torch.log_softmax(step_logits[0].float(), dim=-1)[token].item())
    if not logprobs:
        return 0.0
    return float(math.exp(sum(logprobs) / len(logprobs)))


def should_abstain(answer: str, confidence: float, threshold: float, abstain_answer: str = ABSTAIN_ANSWER) -> bool:
    """The harness's decision: the model said the abstention answer (case, spaces, final .!? ignored), said nothing,
    or is less confident than the threshold."""
    said = answer.casefold().strip().rstrip(".!?").strip()
    return said == abstain_answer.casefold() or not said or confidence < threshold


def render_confidence(confidence: float | None, threshold: float, abstained: bool | None) -> str:
    """A small HTML bar: the confidence as a filled bar + number, the threshold as a tick."""
    if confidence is None:
        return "<div class='conf'><span class='conf-text'>Confidence: …</span></div>"
    color = "#dc2626" if abstained else "#16a34a"
    verdict = "abstained (below threshold or model said unanswerable)" if abstained else "answered"
    return (
        "<div class='conf'>"
        f"<div class='conf-track'><div class='conf-fill' style='width:{100 * confidence:.1f}%;background:{color}'>"
        f"</div><div class='conf-tick' style='left:{100 * threshold:.1f}%'></div></div>"
        f"<span class='conf-text' id='confidence-text'>Confidence: {confidence:.4f} "
        f"(threshold {threshold:g}, {html.escape(verdict)})</span></div>"
    )


def build_demo(model, processor) -> gr.Blocks:
    abstain_answer = (  # run_eval.py saves it next to the threshold
        getattr(model.generation_config, "abstain_answer", None)
        or getattr(model.config, "abstain_answer", None)
        or ABSTAIN_ANSWER
    )
    default_threshold = saved_threshold(model)
    eos = model.generation_config.eos_token_id
    stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    model_name = getattr(model.config, "_name_or_path", "") or "model"

    def verdict(raw: str, confidence: float, threshold: float):
        """(shown answer, confidence, bar html, details) for a finished generation under `threshold`."""
        abstained = should_abstain(raw, confidence, threshold, abstain_answer)
        shown = ABSTAIN_MESSAGE if abstained else raw.strip()
        quoted = raw.strip().replace("`", "'") or "(empty)"  # backticks would break the inline code span
        details = f"Model's raw answer: `{quoted}`"
        return shown, round(confidence, 4), render_confidence(confidence, threshold, abstained), details

    def answer(upload, question, threshold):
        """Stream the answer, then give the final answer (or the abstention), its confidence and the raw answer."""
        image = open_image(upload)
        question = check_question(question)
        threshold = default_threshold if threshold is None else float(threshold)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[image], text=[text], return_tensors="pt")
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
        result = {}

        def generate():
            try:
                result["out"] = model.generate(
                    **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, streamer=streamer,
                    output_logits=True, return_dict_in_generate=True,
                )  # fmt: skip
            except Exception as error:  # surfaced below; end the stream so the loop does not wait for the timeout
                result["error"] = error
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        partial = ""
        for piece in streamer:
            partial += piece
            yield partial, None, render_confidence(None, threshold, None), "Generating…", None
        thread.join()
        if "error" in result:
            raise gr.Error(f"Generation failed: {result['error']}")
        out = result["out"]
        new_tokens = out.sequences[0, inputs["input_ids"].shape[1] :]  # generate returns prompt + new tokens
        raw = processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        confidence = answer_confidence(new_tokens, out.logits, stop_ids)
        yield *verdict(raw, confidence, threshold), (raw, confidence)

    def rethreshold(last, threshold):
        """Slider moved: re-decide the last answer under the new threshold, without running the model again."""
        if not last:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return verdict(last[0], last[1], float(threshold))

    with gr.Blocks(title="Mini-LLaVA: ask a screenshot") as demo:
        gr.Markdown(
            "# Mini-LLaVA: ask a screenshot\n"
            "Upload a document or UI screenshot and ask a question about it. The model answers with a confidence "
            "(geometric-mean token probability) and says so when it cannot find the answer. "
            f"Model: `{html.escape(model_name)}`."
        )
        last = gr.State(None)  # (raw answer, confidence) of the last generation, for the slider
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image", elem_id="image", height=360)
                question = gr.Textbox(
                    label="Question", placeholder="e.g. What is the total due?", max_lines=3, elem_id="question",
                    max_length=MAX_QUESTION_CHARS,
                )  # fmt: skip
                threshold = gr.Slider(
                    0.0, 1.0, value=default_threshold, step=0.01, elem_id="threshold",
                    label="Abstention threshold (saved value preselected; move it to explore)",
                )  # fmt: skip
                submit = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                answer_box = gr.Textbox(label="Answer", interactive=False, elem_id="answer", lines=2)
                confidence = gr.Number(label="Confidence (0-1)", interactive=False, elem_id="confidence")
                bar = gr.HTML(render_confidence(None, default_threshold, None), elem_id="confidence-bar")
                details = gr.Markdown(elem_id="details")
        gr.Examples(
            examples=[[str(EXAMPLES_DIR / name), q] for name, q in EXAMPLES],
            inputs=[image, question],
            label="Examples (synthetic screenshots)",
        )
        outputs = [answer_box, confidence, bar, details, last]
        # preprocess=False: gradio's image preprocessing decodes the upload itself, so corrupt files and decompression
        # bombs would fail there with a generic error; `open_image` opens it under guards and says what is wrong.
        # The upload-folder check on the path still runs (it happens before preprocessing).
        inputs = [image, question, threshold]
        submit.click(answer, inputs, outputs, api_name="answer", preprocess=False)
        question.submit(answer, inputs, outputs, api_visibility="private", preprocess=False)
        threshold.change(rethreshold, [last, threshold], outputs[:4], api_visibility="private", queue=False)
    return demo


CSS = """
.conf-track { position: relative; height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; }
.conf-fill { height: 100%; }
.conf-tick { position: absolute; top: 0; width: 2px; height: 100%; background: #111827; }
.conf-text { font-size: 0.9em; }
"""

if __name__ == "__main__":
    demo = build_demo(*load_model(*resolve_model()))
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(EXAMPLES_DIR)],  # the example PNGs, nothing else of this folder
        css=CSS,
    )
