"""Mini-LLaVA demo: ask a question about a document or UI screenshot; get the answer, or "Not found in the image" with
the reason in plain words, and how confident the model is. Runs as a Hugging Face Space: it loads the model by id or
path with the AutoClasses + trust_remote_code and imports nothing from the Mini-LLaVA repo.
Usage: MODEL_ID=... python app.py
"""

import html
import logging
import math
import os
import threading
import warnings
from pathlib import Path

import gradio as gr
from PIL import Image, UnidentifiedImageError
from transformers import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
# Where the repo's offline default run saves its final model; used when MODEL_ID is unset and the folder exists, so
# `python spaces_demo/app.py` works right after that run (a Space sets MODEL_ID instead).
LOCAL_DEFAULT_MODEL = HERE.parent / "outputs" / "offline" / "final"
NOT_FOUND = "Not found in the image"
EXAMPLES = [  # (file in examples/, question); the images are drawn by make_examples.py
    ("invoice.png", "What is the total due on this invoice?"),
    ("login.png", "What is written on the blue button?"),
    ("dialog.png", "How many files will be deleted?"),
    ("invoice.png", "What is the phone number on this invoice?"),  # not in the image: the model should say so
]

MAX_QUESTION_CHARS = 500
MAX_FILE_SIZE = "20mb"  # enforced by gradio's upload route before the file reaches us
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # PIL opens more (EPS, PSD...): no reason to try
# Image memory per request, measured by tests/test_demo.py against IMAGE_MEMORY_BUDGET_MB with the largest images
# allowed. PIL holds a decoded image in at most 4 bytes per pixel, and downscaling a transparent one makes a second,
# premultiplied copy: at most ~9 bytes per pixel (palette -> RGBA -> premultiplied), 144 MB for MAX_IMAGE_PIXELS.
# The image is downscaled on decode to MAX_IMAGE_SIDE (the vision tower sees a few hundred pixels anyway), so the
# processor's RGB conversion and the tensors work on at most 1536 x 1536 pixels. A JPEG decodes at 1/2, 1/4 or 1/8
# scale (Image.draft) and never holds its full size, so PIL's own bomb check on the announced size is set 64x looser
# and MAX_IMAGE_PIXELS applies to the size actually decoded (a 48 MP phone photo decodes as 12 MP).
MAX_IMAGE_PIXELS = 16_000_000  # 4000 x 4000: a 12 MP photo, an A4 page scanned at 400 dpi
MAX_IMAGE_SIDE = 1536
IMAGE_MEMORY_BUDGET_MB = 200
Image.MAX_IMAGE_PIXELS = 64 * MAX_IMAGE_PIXELS
MAX_NEW_TOKENS = int(os.environ.get("MAX_NEW_TOKENS", "32"))
CONCURRENCY = int(os.environ.get("DEMO_CONCURRENCY", "1"))  # generations at once; the rest wait in the queue
QUEUE_SIZE = int(os.environ.get("DEMO_QUEUE_SIZE", "64"))

LOG = logging.getLogger("minillava.space")


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
    if not hasattr(processor, "post_process_answers") or not hasattr(processor, "abstention_reason"):
        raise SystemExit(
            f"{model_id}'s processor has no post_process_answers (it computes the confidence and the abstention): "
            "re-save the model with the current Mini-LLaVA code, which ships it as remote code."
        )
    return model, processor


def abstention_rules(processor, generation_config):
    """(reason key -> plain words, decide(answer, confidence, threshold) -> reason key or None), both from the
    processor, i.e. the model's remote code: the rule post_process_answers applies, never a copy here."""

    def decide(answer: str, confidence: float, threshold: float):
        return processor.abstention_reason(answer, confidence, threshold, generation_config)

    return processor.abstain_reasons, decide


def user_error(message: str) -> gr.Error:
    """A gr.Error for a user's mistake: shown on the page, logged as one line, no traceback in the server log."""
    LOG.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


def open_image(upload: dict | str | None) -> Image.Image:
    """Uploaded file (gradio's un-preprocessed image payload, or a path) -> PIL image as uploaded (mode, EXIF and
    transparency untouched: the processor makes it upright RGB on white), downscaled on decode to MAX_IMAGE_SIDE.
    Raises a gr.Error that says what is wrong with the file. Gradio has already checked that the path lies in its
    upload cache."""
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not path:
        raise user_error("Please upload an image (a document or UI screenshot).")
    too_large = (
        f"This image is too large: at most {MAX_IMAGE_PIXELS // 1_000_000} million pixels. "
        "Please downscale it or crop the part you are asking about."
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_IMAGE_PIXELS below is stricter
            with Image.open(path, formats=IMAGE_FORMATS) as probe:
                probe.verify()  # structure and checksums, without decoding the pixels
            with Image.open(path, formats=IMAGE_FORMATS) as image:  # verify() leaves the image unusable: reopen
                image.draft(None, (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # JPEG: decode at a reduced scale; others: no-op
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise user_error(too_large)
                image.load()
                if max(image.size) > MAX_IMAGE_SIDE:
                    if image.mode in ("1", "P"):  # palette images only resize with NEAREST: unreadable text
                        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                    image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # in place; keeps the EXIF orientation
                return image.copy()  # the file closes with the `with`
    except gr.Error:  # ours, from above (gr.Error is a ValueError: it must not reach the last clause)
        raise
    except Image.DecompressionBombError:
        raise user_error(too_large) from None
    except UnidentifiedImageError:
        raise user_error(
            f"This file is not an image we can read. Please upload a {', '.join(IMAGE_FORMATS)} file."
        ) from None
    except (OSError, SyntaxError, ValueError):  # truncated data, bad checksums, broken headers
        message = "This image file is corrupt or truncated and cannot be read; please upload it again."
        raise user_error(message) from None


def check_question(question: str | None) -> str:
    question = (question or "").strip()
    if not question:
        raise user_error("Please type a question about the image.")
    if len(question) > MAX_QUESTION_CHARS:
        raise user_error(f"The question is too long ({len(question)} characters); keep it under {MAX_QUESTION_CHARS}.")
    return question


def check_threshold(threshold, default: float) -> float:
    """The slider's value (or an API caller's) as a float in [0, 1]; `default` when none is given."""
    if threshold is None:
        return default
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise user_error(
            f"The threshold must be a number from 0 to 1 (0.65 means: answer only when at least 65% confident); "
            f"got {threshold!r}."
        )
    return value


def generate_answer(model, processor, image: Image.Image, question: str, streamer=None):
    """(generate() output with raw logits, prompt length, how the image was read) for one image and question."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    out = model.generate(
        **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, streamer=streamer, output_logits=True,
        return_dict_in_generate=True,
    )  # fmt: skip
    return out, inputs["input_ids"].shape[1], describe_reading(processor, inputs)  # generate: prompt + new tokens


def describe_reading(processor, inputs) -> dict:
    """How the model saw the image: AnyRes tiles (rows x cols + the whole image as an overview, as LLaVA-NeXT) or
    the whole image squashed into one tile, and the image tokens that took (the placeholders in the prompt)."""
    tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
    grids = inputs.get("image_grids")
    if grids is None:
        return {"rows": 1, "cols": 1, "overview": False, "image_tokens": tokens, "text": "one tile (squashed)"}
    rows, cols = (int(v) for v in grids[0])
    text = f"{rows}×{cols} tile{'s' if rows * cols > 1 else ''} + an overview"
    return {"rows": rows, "cols": cols, "overview": True, "image_tokens": tokens, "text": text}


def percent(value: float, other: float | None = None) -> str:
    """0.913 -> '91%'. One decimal near 0 and 1, and when `other` would round to the same whole percent (so a
    confidence of 65.4% never reads as equal to a 65.1% threshold)."""
    whole = round(100 * value)
    ties = other is not None and other != value and round(100 * other) == whole
    if 0 < value < 0.01 or 0.99 < value < 1 or ties:
        return f"{100 * value:.1f}%"
    return f"{whole}%"


def reading_line(result: dict) -> str:
    """'Read as 2×3 tiles + an overview, 1,234 image tokens': how the image was split, for the verdict."""
    reading = result.get("image_reading")
    if not reading:
        return ""
    text = f"Read as {reading['text']}, {reading['image_tokens']:,} image tokens"
    return f"<p class='verdict-note' id='image-reading'>{html.escape(text)}</p>"


def render_verdict(result: dict | None, reasons: dict[str, str], state: str = "idle") -> str:
    """What a non-expert reads at a glance: found or not, why not in plain words, the confidence in percent on a bar
    with the threshold marked. `result` is one dict from processor.post_process_answers."""
    if result is None:
        text = "Reading the image…" if state == "running" else "Ask a question: the answer's confidence appears here."
        return f"<div class='verdict verdict-idle' id='verdict'><p class='verdict-note'>{text}</p></div>"
    confidence, threshold, reason = result["confidence"], result["threshold"], result["reason"]
    words = html.escape(result["answer"]) or "(nothing)"
    if reason in ("model_said_so", "empty"):  # its confidence is in the word "unanswerable", not in an answer
        note = "The model reported that it cannot find the answer in this image." if reason == "model_said_so" else ""
        return (
            "<div class='verdict verdict-abstained' id='verdict'>"
            f"<p class='verdict-title'>{NOT_FOUND}</p><p class='verdict-why' id='verdict-why'>Why: {reasons[reason]}."
            f"</p>{f'<p class=verdict-note>{note}</p>' if note else ''}{reading_line(result)}</div>"
        )
    conf, thr = percent(confidence, threshold), percent(threshold, confidence)
    if reason == "not_confident":
        title, color = NOT_FOUND, "#dc2626"
        why = f"<p class='verdict-why' id='verdict-why'>Why: {reasons[reason]}.</p>"
        words = f"<p class='verdict-note verdict-guess'>Its unsure guess was: “{words}”</p>"
        summary = f"Confidence {conf}, below the {thr} threshold"
    else:
        title, color, why, words = "Answer found", "#16a34a", "", ""
        summary = f"Confidence {conf}, at or above the {thr} threshold"
    if threshold <= 0.5:  # the label hangs right of the tick, or left of it near the right end of the bar
        where, label = f"left:{100 * threshold:.1f}%", f"▲ threshold {thr}"
    else:
        where, label = f"right:{100 - 100 * threshold:.1f}%", f"threshold {thr} ▲"
    return (
        f"<div class='verdict' id='verdict'><p class='verdict-title'>{title}</p>{why}"
        f"<div class='conf-track' role='meter' aria-valuemin='0' aria-valuemax='100' "
        f"aria-valuenow='{100 * confidence:.0f}' aria-label='confidence'>"
        f"<div class='conf-fill' style='width:{100 * confidence:.1f}%;background:{color}'></div>"
        f"<div class='conf-tick' style='left:{100 * threshold:.1f}%' title='threshold {thr}'></div></div>"
        f"<div class='conf-scale'><span class='conf-tick-label' style='{where}'>{label}</span></div>"
        f"<p class='conf-text' id='confidence-text'>{summary}</p>{words}{reading_line(result)}</div>"
    )


def stream_answer(model, processor, image: Image.Image, question: str, running: str):
    """Generate in a thread while yielding the UI's (text so far, `running` verdict, None, None); returns
    generate_answer's result. A failure is logged with its trace and shown as a short gr.Error."""
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    result = {}

    def run():
        try:
            result["out"] = generate_answer(model, processor, image, question, streamer)
        except Exception as error:  # surfaced below; end the stream so the loop does not wait for the timeout
            result["error"] = error
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    partial = ""
    for piece in streamer:
        partial += piece
        yield partial, running, None, None
    thread.join()
    if "error" in result:
        LOG.error("generation failed", exc_info=result["error"])  # our fault, not the user's: keep the trace
        raise gr.Error("The model failed on this request; please try again.", print_exception=False)
    return result["out"]


class Handlers:
    """The app's event handlers over one loaded model, with its own abstention rule (its remote code) and its saved
    threshold (generation_config.abstain_threshold)."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self.reasons, self.decide = abstention_rules(processor, model.generation_config)
        self.default_threshold = float(getattr(model.generation_config, "abstain_threshold", None) or 0.0)

    def shown(self, result: dict) -> tuple:
        """(answer box, verdict html, result for the API, state) for one post-processed answer."""
        result = {**result, "reason_text": self.reasons.get(result["reason"])}
        answer_text = NOT_FOUND if result["abstained"] else result["answer"]
        return answer_text, render_verdict(result, self.reasons), result, result

    def answer(self, upload, question, threshold):
        """Stream the answer, then the answer or NOT_FOUND, the verdict and the post-processed result."""
        image = open_image(upload)
        question = check_question(question)
        threshold = check_threshold(threshold, self.default_threshold)
        running = render_verdict(None, self.reasons, "running")
        out, prompt_length, reading = yield from stream_answer(self.model, self.processor, image, question, running)
        generation_config = self.model.generation_config
        results = self.processor.post_process_answers(out, prompt_length, generation_config, threshold=threshold)
        yield self.shown({**results[0], "image_reading": reading})

    def rethreshold(self, last, threshold):
        """Slider moved: re-decide the last answer under the new threshold (the model's own rule from its remote
        code), without running the model again."""
        try:
            threshold = check_threshold(threshold, self.default_threshold)
        except gr.Error:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if not last:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        reason = self.decide(last["answer"], last["confidence"], threshold)
        return self.shown({**last, "threshold": threshold, "reason": reason, "abstained": reason is not None})

    def clear(self):
        return "", render_verdict(None, self.reasons), None, None


def input_column(default_threshold: float) -> tuple:
    """(image, question, threshold slider, ask button)."""
    with gr.Column():
        sources = ["upload", "clipboard"]
        image = gr.Image(type="filepath", image_mode=None, sources=sources, label="Image", elem_id="image", height=360)
        question = gr.Textbox(
            label="Question",
            placeholder="e.g. What is the total due?",
            max_lines=3,
            elem_id="question",
            max_length=MAX_QUESTION_CHARS,
        )
        threshold = gr.Slider(
            0.0,
            1.0,
            value=default_threshold,
            step=0.01,
            elem_id="threshold",
            label="Threshold",
            info="Answer only when the model is at least this confident (0.65 = 65%). The model's saved "
            "value is preselected; move it to explore.",
        )
        submit = gr.Button("Ask", variant="primary", elem_id="ask")
    return image, question, threshold, submit


def output_column(reasons: dict[str, str]) -> tuple:
    """(answer box, verdict, details JSON)."""
    with gr.Column():
        answer_box = gr.Textbox(
            label="Answer", interactive=False, elem_id="answer", lines=2, max_lines=12, autoscroll=False
        )
        verdict = gr.HTML(render_verdict(None, reasons), label="Verdict", elem_id="verdict-box")
        with gr.Accordion("Details (for developers)", open=False):
            details = gr.JSON(label="Result", elem_id="result")
    return answer_box, verdict, details


def connect_events(handlers: Handlers, image, question, threshold, submit, outputs: list) -> None:
    """Ask (button, Enter, an example), clear on a refused request or a new image, re-decide on the slider."""
    # preprocess=False: gradio's image preprocessing decodes the upload itself, so corrupt files and decompression
    # bombs would fail there with a generic error; `open_image` opens it under guards and says what is wrong.
    # The upload-folder check on the path still runs (it happens before preprocessing).
    inputs, private = [image, question, threshold], {"api_visibility": "private"}
    asked = submit.click(handlers.answer, inputs, outputs, api_name="answer", preprocess=False)
    entered = question.submit(handlers.answer, inputs, outputs, preprocess=False, **private)
    for event in (asked, entered):  # a refused request leaves no earlier answer on screen
        event.failure(handlers.clear, None, outputs, queue=False, **private)
    for event in (image.upload, image.clear):  # a new image: the old answer is about another image
        event(handlers.clear, None, outputs, queue=False, **private)
    threshold.change(handlers.rethreshold, [outputs[-1], threshold], outputs, queue=False, **private)
    # After the events, so that `answer` keeps api_name='answer' (examples register it again, undocumented).
    gr.Examples(
        examples=[[str(EXAMPLES_DIR / name), q] for name, q in EXAMPLES],
        inputs=inputs,  # the threshold is not in the rows: the slider's value is used
        outputs=outputs,
        fn=handlers.answer,
        run_on_click=True,
        cache_examples=False,  # a Space would cache by default: answers must follow the slider
        label="Examples (synthetic screenshots): click one to run it",
        elem_id="examples",
    )


def build_demo(model, processor) -> gr.Blocks:
    handlers = Handlers(model, processor)
    model_name = getattr(model.config, "_name_or_path", "") or "model"
    with gr.Blocks(title="Mini-LLaVA: ask a screenshot") as demo:
        gr.Markdown(
            "# Mini-LLaVA: ask a screenshot\n"
            "Upload a document or UI screenshot (or paste one) and ask a question about it. You get the answer, or "
            f"**{NOT_FOUND}** with the reason, and how confident the model is. "
            f"Model: `{html.escape(model_name)}`."
        )
        last = gr.State(None)  # the last post-processed result, for the slider
        with gr.Row():
            image, question, threshold, submit = input_column(handlers.default_threshold)
            outputs = [*output_column(handlers.reasons), last]
        connect_events(handlers, image, question, threshold, submit, outputs)
    return demo


CSS = """
#verdict { overflow-wrap: anywhere; }
#verdict p { margin: 0.2em 0; }
.verdict-title { font-size: 1.25em; font-weight: 600; }
.verdict-note { color: #4b5563; }
#answer textarea { overflow-wrap: anywhere; white-space: pre-wrap; }
.conf-track { position: relative; height: 14px; background: #e5e7eb; border-radius: 7px; margin-top: 0.6em; }
.conf-fill { height: 100%; border-radius: 7px; }
.conf-tick { position: absolute; top: -4px; width: 3px; height: 22px; background: #111827; }
.conf-scale { position: relative; height: 1.4em; font-size: 0.8em; }
.conf-tick-label { position: absolute; margin: 0 -0.45em; white-space: nowrap; }
"""


def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    demo = build_demo(*load_model(*resolve_model()))
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(EXAMPLES_DIR)],  # the example PNGs, nothing else of this folder
        css=CSS,
    )


if __name__ == "__main__":
    main()
