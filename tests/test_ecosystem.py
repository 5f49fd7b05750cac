"""The model as Hugging Face users meet it: the image-text-to-text pipeline on a saved folder, AutoPeftModelForCausalLM
on a run_sft stage-2 adapter, and saved configs / cards naming no absolute path of the machine that wrote them.

One tiny stage-2 LoRA run (recipes/smoke/stage2.yaml, 2 steps) is shared by the module; its base is the saved tiny
model the pipeline tests load.
"""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import recipes
from data_scripts.make_synthetic import build_synthetic
from data_scripts.schema import load_dataset_dir
from metrics import evaluation
from metrics.model_card import write_model_card
from modeling_minillava import MiniLlavaForConditionalGeneration
from modeling_minillava.modeling_minillava import portable_name
from processing import MiniLlavaProcessor
from processing.collator import MiniLlavaDataCollator
from recipes.builder import lora_config

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the invoice total?"
GREEDY = {"max_new_tokens": 5, "generate_kwargs": {"do_sample": False}}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The smoke recipes' layout: stage1/ (the base), data/synthetic, stage2/ (the LoRA run)."""
    return tmp_path_factory.mktemp("ecosystem")


@pytest.fixture(scope="module")
def synthetic(work) -> str:
    out = str(work / "data" / "synthetic")
    build_synthetic(out, n=40, seed=0)
    return out


@pytest.fixture(scope="module")
def model_dir(save_quiet_model, work) -> str:
    """A tiny random model + processor saved with save_pretrained: what a stage-1 run leaves for stage 2."""
    return save_quiet_model(work / "stage1")


@pytest.fixture(scope="module")
def page(work) -> str:
    path = work / "page.png"
    Image.new("RGB", (96, 64), (200, 40, 30)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def reference(model_dir):
    """(model, processor) loaded directly, to compare the pipeline with plain generate + decode."""
    model = MiniLlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    return model, MiniLlavaProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def pipe(model_dir):
    from transformers import pipeline

    return pipeline("image-text-to-text", model=model_dir, trust_remote_code=True)


@pytest.fixture(scope="module")
def stage2(work, model_dir, synthetic) -> Path:
    """recipes/smoke/stage2.yaml (projector + vision tower + top block fully, LoRA on the rest) for 2 steps."""
    recipe = work / "stage2.yaml"
    recipe.write_text((ROOT / "recipes/smoke/stage2.yaml").read_text().replace("OUT_DIR", str(work)))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # launched from the folder holding stage1/, as scripts/smoke.sh runs from above outputs/
        recipes.run(
            [
                str(recipe),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "2",
                "--max_train_samples",
                "8",
                "--warmup_steps",
                "0",
                "--save_strategy",
                "steps",
                "--save_steps",
                "1",
                "--save_total_limit",
                "2",
                "--report_to",
                "none",
            ]
        )
    return work / "stage2"


def chat(key: str, image) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", key: image}, {"type": "text", "text": QUESTION}]}]


def greedy_reference(model, processor, inputs) -> tuple[torch.Tensor, str]:
    """(prompt + new ids, decoded new text) from model.generate, as the pipeline should give them."""
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=GREEDY["max_new_tokens"], do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(ids[:, :prompt_len], inputs["input_ids"])  # generate returns prompt + new tokens
    new_text = processor.decode(ids[0, prompt_len:], skip_special_tokens=True)
    assert new_text.strip(), "the reference answer is empty: the comparison would prove nothing"
    return ids[0], new_text


def logits_of(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def text_files(folder) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix in (".json", ".md"))


def files_naming(folder, prefix: str) -> dict[str, list[str]]:
    """{file: lines holding `prefix`} over every json / md file under folder."""
    hits = {}
    for path in text_files(folder):
        lines = [line.strip() for line in path.read_text().splitlines() if prefix in line]
        if lines:
            hits[str(path.relative_to(folder))] = lines
    return hits


# ---- pipeline("image-text-to-text") -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["path", "image"])
def test_pipeline_chat_with_image_path_matches_generate(pipe, reference, page, key):
    model, processor = reference
    messages = chat(key, page)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids, new_text = greedy_reference(model, processor, inputs)

    full = pipe(text=messages, **GREEDY)
    assert full[0]["generated_text"] == [*messages, {"role": "assistant", "content": new_text}]
    assert pipe(text=messages, return_full_text=False, **GREEDY)[0]["generated_text"] == new_text
    assert torch.equal(pipe(text=messages, return_tensors=True, **GREEDY)[0]["generated_token_ids"], ids)


def test_pipeline_images_and_text_prompt_matches_generate(pipe, reference, page):
    model, processor = reference
    prompt = processor.apply_chat_template(chat("path", page), add_generation_prompt=True)
    assert prompt.count(processor.image_token) == 1  # the unexpanded prompt a user writes
    inputs = processor(images=Image.open(page), text=prompt, return_tensors="pt")
    ids, new_text = greedy_reference(model, processor, inputs)

    assert pipe(images=page, text=prompt, **GREEDY)[0]["generated_text"] == prompt + new_text
    assert pipe(images=page, text=prompt, return_full_text=False, **GREEDY)[0]["generated_text"] == new_text
    assert torch.equal(pipe(images=page, text=prompt, return_tensors=True, **GREEDY)[0]["generated_token_ids"], ids)


def test_pipeline_batch_of_chats_matches_one_by_one(pipe, page, work):
    other = work / "other.png"
    Image.new("RGB", (40, 120), (30, 90, 220)).save(other)
    chats = [chat("path", page), chat("path", str(other))]
    chats[1][0]["content"][1]["text"] = "Which button is at the bottom right of this screen?"  # rows of unequal length
    one_by_one = [pipe(text=c, return_full_text=False, **GREEDY)[0]["generated_text"] for c in chats]
    batched = pipe(text=chats, batch_size=2, return_full_text=False, **GREEDY)  # padded as the processor pads
    assert [out[0]["generated_text"] for out in batched] == one_by_one


# ---- AutoPeftModelForCausalLM on a run_sft adapter ---------------------------------------------------------------


@pytest.mark.slow
def test_stage2_adapter_config_is_causal_lm_with_a_portable_base(stage2):
    config = json.loads((stage2 / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"
    assert config.get("auto_mapping") is None  # no import of our own package on the loading side
    # init_from=<work>/stage1 (absolute) with the run launched from <work>: the path relative to the launch directory.
    assert config["base_model_name_or_path"] == "stage1"
    assert set(config["modules_to_save"]) == {"multi_modal_projector", "language_model.layers.1", "vision_tower"}
    checkpoints = sorted(p.name for p in stage2.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    for name in checkpoints:
        assert json.loads((stage2 / name / "adapter_config.json").read_text()) == config


@pytest.mark.slow
def test_auto_peft_loads_the_stage2_adapter_like_peft_and_merged(stage2, model_dir, synthetic, monkeypatch):
    from peft import AutoPeftModelForCausalLM, PeftModel, PeftModelForCausalLM
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(stage2, trust_remote_code=True)
    rows = [load_dataset_dir(synthetic)["validation"][i] for i in range(2)]
    batch = {k: v for k, v in MiniLlavaDataCollator(processor)(rows).items() if k != "labels"}
    base_logits = logits_of(MiniLlavaForConditionalGeneration.from_pretrained(model_dir), batch)
    peft_model = PeftModel.from_pretrained(MiniLlavaForConditionalGeneration.from_pretrained(model_dir), stage2)
    expected = logits_of(peft_model, batch)
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # training moved the adapter

    monkeypatch.chdir(Path(model_dir).parent)  # PEFT resolves the base's name against the cwd: the launch directory
    for folder in (stage2, stage2 / "checkpoint-2"):  # the final adapter and the last checkpoint are the same
        auto = AutoPeftModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        assert isinstance(auto, PeftModelForCausalLM)
        assert type(auto.get_base_model()).__name__ == "MiniLlavaForConditionalGeneration"
        assert torch.equal(logits_of(auto, batch), expected)
    merged = AutoModelForImageTextToText.from_pretrained(stage2 / "merged", trust_remote_code=True)
    torch.testing.assert_close(logits_of(merged, batch), expected, atol=1e-5, rtol=0)


def test_auto_peft_keeps_the_vocabulary_when_the_image_token_was_added(build, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model

    model, processor = build(llm="llama", seed=0)  # the Llama stand-in reserves no image token
    vocab_size = model.config.text_config.vocab_size
    assert model.config.image_token_id == vocab_size == len(processor.tokenizer) - 1
    monkeypatch.chdir(tmp_path)
    model.save_pretrained("base")
    base = MiniLlavaForConditionalGeneration.from_pretrained("base")  # name_or_path "base": the adapter's base
    adapter = get_peft_model(base, lora_config(base, recipes.ModelArguments(lora_r=4)))  # what SFTTrainer applies
    adapter.save_pretrained("adapter")
    processor.save_pretrained("adapter")  # as run_sft does: the processor goes with the adapter
    # The adapter folder's tokenizer is one longer than the table (the placeholder): AutoPeft asks for a resize,
    # which the model declines for exactly that id, so logits match a plain PeftModel load.
    auto = AutoPeftModelForCausalLM.from_pretrained("adapter", trust_remote_code=True)
    assert auto.get_input_embeddings().num_embeddings == vocab_size
    plain = PeftModel.from_pretrained(MiniLlavaForConditionalGeneration.from_pretrained("base"), "adapter")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (40, 30))},
                {"type": "text", "text": "What is the total?"},
            ],
        }
    ]
    batch = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert torch.equal(logits_of(auto, batch), logits_of(plain, batch))


# ---- no absolute local path in saved configs and cards ----------------------------------------------------------


def test_portable_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "stage1").mkdir(parents=True)
    assert portable_name(str(tmp_path / "outputs" / "stage1")) == "outputs/stage1"  # below the cwd
    assert portable_name("/elsewhere/models/stage1/") == "stage1"  # outside it: the folder name
    assert portable_name("outputs/stage1") == "outputs/stage1"  # relative: as the recipe gave it
    assert portable_name("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"  # a Hub id
    assert portable_name("") == ""  # from_backbones' top-level name


def test_saved_model_folder_names_no_local_path(model_dir, tmp_path_factory):
    # transformers drops only the top-level `_name_or_path` on save: the sub-configs' names are from_backbones' care.
    assert files_naming(model_dir, str(tmp_path_factory.getbasetemp())) == {}
    config = json.loads((Path(model_dir) / "config.json").read_text())
    names = config["text_config"]["_name_or_path"], config["vision_config"]["_name_or_path"]
    assert names == ("llm-qwen2", "vision-siglip")  # local backbones by folder name


@pytest.mark.slow
def test_stage2_run_output_names_no_local_path(stage2, tmp_path_factory):
    # run_info.json is the run's own provenance record (the exact command, dataset and output folders of this
    # machine; tests/test_train.py pins them): it is not a config or card, and is left out.
    hits = files_naming(stage2, str(tmp_path_factory.getbasetemp()))
    assert {name for name in hits if name != "run_info.json"} == set(), hits
    scanned = {str(p.relative_to(stage2)) for p in text_files(stage2)}
    expected = {
        "adapter_config.json",
        "README.md",
        "merged/config.json",
        "checkpoint-2/adapter_config.json",
        "checkpoint-2/README.md",
        "checkpoint-2/trainer_state.json",
        "processor_config.json",
    }
    assert expected <= scanned
    merged = json.loads((stage2 / "merged" / "config.json").read_text())
    assert merged["text_config"]["_name_or_path"] == "llm-qwen2"  # backbones outside the launch folder: by name
    assert merged["vision_config"]["_name_or_path"] == "vision-siglip"


@pytest.mark.slow
def test_run_eval_card_names_no_local_path(stage2, model_dir, synthetic, tmp_path, tmp_path_factory):
    from huggingface_hub import ModelCard

    card_path = stage2 / "README.md"
    trained_name = ModelCard.load(card_path).data.model_name  # run_sft's card, before the evaluation
    evaluation.main(
        [
            "--model",
            model_dir,
            "--adapter",
            str(stage2),
            "--dataset",
            synthetic,
            "--split",
            "test",
            "--max_samples",
            "2",
            "--max_new_tokens",
            "2",
            "--batch_size",
            "2",
            "--output_dir",
            str(tmp_path / "eval"),
        ]
    )
    assert str(tmp_path_factory.getbasetemp()) not in card_path.read_text()
    card = ModelCard.load(card_path)
    assert card.data.eval_results and card.data.eval_results[0].dataset_name == "synthetic"
    assert card.data.base_model == "stage1"  # run_sft's portable name, kept
    assert card.data.model_name == trained_name and "## Training" in card.text  # appended to, never renamed


def test_model_card_drops_absolute_base_models_and_keeps_hub_ids(tmp_path):
    from huggingface_hub import EvalResult, ModelCard

    local = str(tmp_path / "models" / "stage1")
    (tmp_path / "README.md").write_text(  # an adapter card PEFT wrote before run_sft named bases portably
        f"---\nbase_model:\n- {local}\n- Qwen/Qwen2.5-1.5B-Instruct\nlibrary_name: peft\ntags:\n"
        f"- base_model:adapter:{local}\n- base_model:adapter:Qwen/Qwen2.5-1.5B-Instruct\n- lora\n---\n\n# card\n"
    )
    result = EvalResult(
        task_type="visual-question-answering",
        dataset_type="synthetic",
        dataset_name="synthetic",
        dataset_split="test",
        metric_type="exact_match",
        metric_value=0.5,
    )
    path = write_model_card(str(tmp_path), [result], model_name="adapter")
    assert str(tmp_path) not in path.read_text()
    card = ModelCard.load(path)
    assert card.data.base_model == ["Qwen/Qwen2.5-1.5B-Instruct"]
    assert card.data.tags == ["base_model:adapter:Qwen/Qwen2.5-1.5B-Instruct", "lora"]
