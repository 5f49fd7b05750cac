"""README's "Use a trained model" snippet runs as written (a saved tiny model in place of the Hub id, an image file in
place of invoice.png) in a fresh process without the project importable, and prints the model's greedy answer."""

import os
import re

import pytest
import torch
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB_ID = "your-org/minillava-qwen2.5-1.5b"
pytestmark = pytest.mark.slow  # a fresh process loads the saved model


def readme_snippet() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Use a trained model from the Hub", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_usage_snippet_prints_the_greedy_answer(save_quiet_model, tmp_path, fresh_python):
    from modeling_minillava import MiniLlavaForConditionalGeneration
    from processing import MiniLlavaProcessor

    folder = save_quiet_model(tmp_path / "model")  # answers in visible tokens, not only "\n"
    model = MiniLlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = MiniLlavaProcessor.from_pretrained(folder)
    image = Image.new("RGB", (120, 80), "white")
    ImageDraw.Draw(image).text((10, 30), "Total: 250", fill="black")
    workdir = tmp_path / "user"
    workdir.mkdir()
    image.save(workdir / "invoice.png")

    snippet = readme_snippet()
    assert HUB_ID in snippet and '"invoice.png"' in snippet
    code = "import sys\nsys.modules['modeling_minillava'] = sys.modules['processing'] = None\n"
    code += snippet.replace(HUB_ID, str(folder)).replace("max_new_tokens=32", "max_new_tokens=6, min_new_tokens=6")
    proc = fresh_python(code, cwd=workdir)

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the invoice total?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    expected = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected.strip() and proc.stdout == expected + "\n"
