"""save_pretrained -> a fresh process (other cwd, project NOT importable, offline) loads it with trust_remote_code and
reproduces logits and greedy generations exactly, through AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
and AutoProcessor."""

import json
import os
import textwrap

import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FILES = {"modeling_minillava.py", "configuration_minillava.py", "projectors.py", "anyres.py"}
# The processor and the sibling modules it imports relatively: save_pretrained must copy every one of them.
PROCESSOR_FILES = {
    "processing_minillava.py",
    "chat_templates.py",
    "image_loading.py",
    "answers.py",
    "anyres_processing.py",
}

CHILD = textwrap.dedent(
    """
    import sys
    for name in ("modeling_minillava", "processing", "data_scripts", "metrics"):
        sys.modules[name] = None  # the project is NOT importable: only the folder's remote code may be used
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    folder, out = sys.argv[1], sys.argv[2]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [Image.new("RGB", (48, 40), (200, 30, 90)), Image.new("RGB", (30, 60), (10, 120, 240))]
    texts = [text, text + " please"]
    batch = processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")
    result = {"text": text, "processor": type(processor).__module__}
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            result[auto.__name__] = {
                "class": type(model).__module__ + "." + type(model).__name__,
                "logits": model(**batch).logits,
                "generated": model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False),
            }
    torch.save(result, out)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("vision, llm, projector", [("siglip", "qwen2", "mlp2x_gelu"), ("clip", "llama", "perceiver")])
def test_fresh_process_loads_remote_code_with_identical_outputs(build, tmp_path, fresh_python, vision, llm, projector):
    model, processor = build(vision, llm, projector_type=projector, perceiver_num_latents=8)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    # Model and processor code land flat in one folder: each file must be its source, byte for byte (a processing
    # module named like a model module would overwrite it).
    for source, names in (("modeling_minillava", MODEL_FILES), ("processing", PROCESSOR_FILES)):
        for name in names:
            with open(os.path.join(ROOT, source, name), "rb") as f:
                assert (folder / name).read_bytes() == f.read(), name
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"}

    out = tmp_path / "child.pt"
    fresh_python(CHILD, folder, out)
    child = torch.load(out, weights_only=False)

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert child["text"] == text
    assert child["processor"].startswith("transformers_modules.")
    images = [Image.new("RGB", (48, 40), (200, 30, 90)), Image.new("RGB", (30, 60), (10, 120, 240))]
    batch = processor(
        images=images, text=[text, text + " please"], padding=True, padding_side="left", return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**batch).logits
        generated = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    for auto in ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"):
        assert child[auto]["class"].startswith("transformers_modules.")
        assert child[auto]["class"].endswith("MiniLlavaForConditionalGeneration")
        assert torch.equal(child[auto]["logits"], logits)
        assert torch.equal(child[auto]["generated"], generated)
