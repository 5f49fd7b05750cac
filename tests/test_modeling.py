"""MiniLlava model: exact loss masking, determinism, every backbone x projector, TRL's fused head, generate()."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the total?"}]}]


def _inputs(processor, texts=("",), side="right", n_images=None):
    base = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    images = [Image.new("RGB", (48, 40), (30 * i, 200 - 20 * i, 90)) for i in range(len(texts))]
    return processor(
        images=images, text=[base + t for t in texts], padding=True, padding_side=side, return_tensors="pt"
    )


def _labels_on_text_tail(batch, n_tail: int) -> torch.Tensor:
    """Labels = input_ids on the last `n_tail` real tokens of each row; -100 on image slots, padding and prompt."""
    labels = torch.full_like(batch["input_ids"], -100)
    for row in range(labels.shape[0]):
        real = batch["attention_mask"][row].nonzero().flatten()[-n_tail:]
        labels[row, real] = batch["input_ids"][row, real]
    return labels


@pytest.mark.parametrize(
    "vision, llm, projector",
    list(itertools.product(["siglip", "clip"], ["qwen2", "llama"], ["mlp2x_gelu", "perceiver", "pixel_shuffle_mlp"])),
)
def test_every_backbone_and_projector_runs_forward_and_backward(build, vision, llm, projector):
    model, processor = build(vision, llm, projector_type=projector, perceiver_num_latents=8)
    expected_tokens = {"mlp2x_gelu": 64, "perceiver": 8, "pixel_shuffle_mlp": 16}[projector]
    assert model.config.num_image_tokens == processor.num_image_tokens == expected_tokens
    batch = _inputs(processor, texts=("", " more words"))
    assert (batch["input_ids"] == model.config.image_token_id).sum(1).tolist() == [expected_tokens] * 2
    model.train()
    out = model(**batch, labels=_labels_on_text_tail(batch, 3))
    t = batch["input_ids"].shape[1]
    assert out.logits.shape == (2, t, model.config.text_config.vocab_size)
    out.loss.backward()
    proj = model.model.multi_modal_projector
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters() if p.ndim > 1)
    assert all(p.grad is None for p in model.model.vision_tower.parameters())  # frozen by default
    d_text = model.config.text_config.hidden_size
    assert model.get_image_features(batch["pixel_values"]).shape == (2, expected_tokens, d_text)


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_loss_covers_exactly_the_labelled_tokens(build, llm):
    model, processor = build("siglip", llm)
    batch = _inputs(processor, texts=("", " and then some"))
    labels = _labels_on_text_tail(batch, 2)
    is_image = batch["input_ids"] == model.config.image_token_id
    assert (labels[is_image] == -100).all() and (labels[batch["attention_mask"] == 0] == -100).all()
    with torch.no_grad():
        out = model(**batch, labels=labels)
    # Hand-computed next-token cross-entropy over exactly the labelled positions.
    logp = F.log_softmax(out.logits.float(), dim=-1)
    positions = [(b, t) for b in range(labels.shape[0]) for t in range(1, labels.shape[1]) if labels[b, t] != -100]
    terms = [-logp[b, t - 1, labels[b, t]] for b, t in positions]
    assert len(terms) == 4
    torch.testing.assert_close(out.loss, torch.stack(terms).mean(), rtol=0, atol=1e-6)


def test_image_features_reach_the_text_and_only_through_the_slots(build):
    model, processor = build("siglip", "qwen2")
    batch = _inputs(processor)
    with torch.no_grad():
        base = model(**batch).logits
        other = dict(batch, pixel_values=torch.rand_like(batch["pixel_values"]))
        changed = model(**other).logits
        # The placeholder's own embedding row never matters: features overwrite it.
        model.get_input_embeddings().weight[model.config.image_token_id] += 1.0
        same = model(**batch).logits
    first_slot = int((batch["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    assert torch.equal(base[:, :first_slot], changed[:, :first_slot])  # causal: text before the image is unaffected
    assert not torch.allclose(base[:, -1], changed[:, -1])  # the answer position sees the image
    other_columns = torch.arange(base.shape[-1]) != model.config.image_token_id  # Qwen ties lm_head to that row
    assert torch.equal(base[..., other_columns], same[..., other_columns])


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_loss_never_targets_placeholders_whoever_built_the_labels(build, llm):
    """TRL's vision collator labels every non-pad token, placeholders included: the model must ignore those."""
    model, processor = build("siglip", llm)
    batch = _inputs(processor, texts=("", " and then some"))
    naive = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # placeholders labelled too
    masked = naive.masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
    with torch.no_grad():
        assert model(**batch, labels=naive).loss.item() == model(**batch, labels=masked).loss.item()
        out = model(**batch, labels=naive)
    logp = F.log_softmax(out.logits.float(), dim=-1)
    b, t = (masked[:, 1:] != -100).nonzero(as_tuple=True)
    reference = -logp[b, t, masked[b, t + 1]].mean()
    torch.testing.assert_close(out.loss, reference, rtol=0, atol=1e-6)


def test_same_batch_and_seed_give_bitwise_identical_loss(build):
    losses = []
    for _ in range(2):
        model, processor = build("clip", "llama", seed=123, projector_type="perceiver", perceiver_num_latents=8)
        batch = _inputs(processor, texts=("", " x y"))
        model.train()
        torch.manual_seed(7)
        losses.append(model(**batch, labels=_labels_on_text_tail(batch, 3)).loss)
    assert losses[0].item() == losses[1].item()
    model_b, _ = build("clip", "llama", seed=124, projector_type="perceiver", perceiver_num_latents=8)
    assert not torch.equal(model_b.model.multi_modal_projector.latents, model.model.multi_modal_projector.latents)


def test_trl_fused_lm_head_loss_equals_the_models_loss(build):
    from trl.trainer.utils import add_fused_lm_head

    model, processor = build("siglip", "qwen2")
    batch = _inputs(processor, texts=("", " a b c"))
    labels = _labels_on_text_tail(batch, 3)
    with torch.no_grad():
        own = model(**batch, labels=labels).loss
        add_fused_lm_head(model)
        fused = model(**batch, labels=labels, fused_lm_head=True)
    assert fused.label_mask.sum() == 6
    torch.testing.assert_close(fused.loss, own, rtol=1e-5, atol=1e-6)


def test_placeholder_count_mismatch_names_both_numbers(build):
    model, processor = build("siglip", "qwen2", projector_type="pixel_shuffle_mlp")  # 16 placeholders per image
    _, wrong = build("siglip", "qwen2")  # a processor laid out for 64
    with pytest.raises(
        ValueError,
        match=r"input_ids hold 64 image placeholder tokens \(id \d+\), but pixel_values give 1 image\(s\) x 16",
    ):
        model(**_inputs(wrong))
    batch = _inputs(processor)
    text_only = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_id, 0)
    with pytest.raises(ValueError, match=r"input_ids hold 0 image placeholder tokens .* 1 image\(s\) x 16"):
        model(input_ids=text_only, pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="input_ids hold 16 image placeholder tokens but no pixel_values were given"):
        model(input_ids=batch["input_ids"])


def test_inputs_embeds_find_in_vocabulary_placeholders_by_their_embedding(build):
    model, processor = build("siglip", "qwen2")
    batch = _inputs(processor)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad():
        by_ids = model(**batch).logits
        by_embeds = model(inputs_embeds=embeds, pixel_values=batch["pixel_values"]).logits
    assert torch.equal(by_ids, by_embeds)
    llama, llama_processor = build("siglip", "llama")  # its placeholder id is past the embedding table
    batch = _inputs(llama_processor)
    with pytest.raises(ValueError, match="outside the embedding table"):
        llama(inputs_embeds=torch.zeros(1, batch["input_ids"].shape[1], 128), pixel_values=batch["pixel_values"])


def test_lm_head_is_tied_exactly_when_the_llm_ties(build, tmp_path):
    from modeling_minillava import MiniLlavaForConditionalGeneration

    qwen, _ = build("siglip", "qwen2")
    llama, _ = build("siglip", "llama")
    assert qwen.lm_head.weight is qwen.get_input_embeddings().weight
    assert llama.lm_head.weight is not llama.get_input_embeddings().weight
    qwen.save_pretrained(tmp_path)
    reloaded = MiniLlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight is reloaded.get_input_embeddings().weight
    assert torch.equal(reloaded.lm_head.weight, qwen.lm_head.weight)


def test_unfrozen_tower_gets_gradients(build):
    model, processor = build("siglip", "qwen2")
    model.model.vision_tower.requires_grad_(True)
    batch = _inputs(processor)
    model(**batch, labels=_labels_on_text_tail(batch, 2)).loss.backward()
    assert model.model.vision_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def _greedy_reference(model, batch, row: int, steps: int) -> list[int]:
    """No cache, no padding: re-run the full unpadded sequence at every step and take the argmax."""
    keep = batch["attention_mask"][row].bool()
    ids = batch["input_ids"][row, keep][None]
    pixels = batch["pixel_values"][row : row + 1]
    new = []
    for _ in range(steps):
        logits = model(input_ids=ids, pixel_values=pixels, use_cache=False).logits
        nxt = int(logits[0, -1].argmax())
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return new


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_batched_cached_generate_equals_full_recompute_reference(build, side, llm):
    model, processor = build("siglip", llm, seed=3)
    batch = _inputs(processor, texts=("", " one two three four five", " six"), side=side)
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    steps = 6
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        reference = [_greedy_reference(model, batch, row, steps) for row in range(3)]
    # Standard GenerationMixin output: the prompt as given, then the new tokens (the model-card slicing idiom).
    prompt_len = batch["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_len], batch["input_ids"])
    assert out[:, prompt_len:].tolist() == reference


def test_from_backbones_keeps_pretrained_weights_even_from_a_full_siglip_checkpoint(backbones, tmp_path):
    """google/siglip-so400m-patch14-384 is a full SiglipModel (text + vision): only its vision half is taken."""
    from transformers import AutoModelForCausalLM, SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from modeling_minillava import MiniLlavaForConditionalGeneration
    from processing import MiniLlavaProcessor

    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    text = {**vision, "num_hidden_layers": 1, "vocab_size": 99}
    torch.manual_seed(0)
    full = SiglipModel(SiglipConfig(text_config=text, vision_config={**vision, "image_size": 32, "patch_size": 8}))
    full.save_pretrained(tmp_path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)

    model = MiniLlavaForConditionalGeneration.from_backbones(str(tmp_path), backbones["llm-qwen2"])
    assert model.config.vision_config.model_type == "siglip_vision_model" and model.config.num_image_tokens == 16
    tower = model.model.vision_tower.state_dict()
    assert tower.keys() == full.vision_model.state_dict().keys()
    assert all(torch.equal(tower[k], v) for k, v in full.vision_model.state_dict().items())
    llm = AutoModelForCausalLM.from_pretrained(backbones["llm-qwen2"])
    assert all(torch.equal(model.model.language_model.state_dict()[k], v) for k, v in llm.model.state_dict().items())
    assert torch.equal(model.lm_head.weight, llm.lm_head.weight)
    proj = model.model.multi_modal_projector.linear_1.weight
    assert torch.isfinite(proj).all() and 0.01 < float(proj.std()) < 0.03  # freshly initialised (std 0.02)
    processor = MiniLlavaProcessor.from_backbones(str(tmp_path), backbones["llm-qwen2"], config=model.config)
    assert processor.num_image_tokens == 16
