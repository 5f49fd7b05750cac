"""Write tiny, seeded stand-ins for the Hub backbones as ordinary HF folders (the offline default and the tests).

    python -m data_scripts.make_tiny_backbones --out DIR

DIR/vision-siglip, DIR/vision-clip: tiny SigLIP / CLIP vision towers + image processors.
DIR/llm-qwen2, DIR/llm-llama: tiny causal LMs of different widths, each with a byte-level BPE tokenizer trained here
with `tokenizers` on a built-in corpus, its special tokens and its family's chat template (ChatML / Llama-3). The
Qwen2 stand-in reserves `<|image_pad|>` as Qwen2.5 does; the Llama stand-in reserves no image token.
Anything that takes a backbone name takes these folders: the code path is the Hub path.
"""

import argparse
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

IMAGE_SIZE, PATCH_SIZE = 128, 16  # 8x8 = 64 patches per image; 128 px keeps coarse document text visible
VOCAB_SIZE = 1024

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Words the synthetic documents, UI screens and questions use, so the tiny tokenizer splits them sensibly.
CORPUS = """
You are a helpful assistant. Answer the question using a single word or phrase. Describe the image briefly.
What is the invoice total? What is the date? Who is the vendor? How many line items are there? Is there a logo?
Which button is at the bottom right? What kind of document is this? What is the value of the field? unanswerable
invoice receipt form table letter memo login settings dialog menu list notification screen button OK Cancel Save
Submit Delete Sign in Log out Username Password Email Name Address Phone Date Total Subtotal Tax Amount Due Qty
Price Item Description Vendor Customer Order Number Reference Account Balance Paid yes no Yes No red green blue
gray orange purple black white top bottom left right center the a an of to in is are on at for with from by this
January February March April May June July August September October November December Monday Friday
0 1 2 3 4 5 6 7 8 9 10 11 12 20 25 50 99 100 250 1000 $ % . , : ; - / ( ) # @ ? ! ' "
Acme Corp Globex Initech Umbrella Stark Wayne Hooli Soylent Dear Sincerely Regards Subject To From Re
""".split()


def train_tokenizer(special_tokens: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [" ".join(CORPUS[i : i + 12]) for i in range(0, len(CORPUS), 12)]
    tok.train_from_iterator(lines * 20, trainer=trainer)  # deterministic: same corpus, same merges
    return tok


def save_vision(out: str, name: str, model, image_processor) -> None:
    path = os.path.join(out, name)
    model.save_pretrained(path)
    image_processor.save_pretrained(path)


def save_llm(out: str, name: str, config_cls, model_cls, specials: dict, template: str, **sizes) -> None:
    path = os.path.join(out, name)
    special_tokens = [t for t in specials["all"]]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(special_tokens),
        bos_token=specials.get("bos"),
        eos_token=specials["eos"],
        pad_token=specials.get("pad"),
        chat_template=template,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in special_tokens}
    config = config_cls(
        vocab_size=len(tok),
        bos_token_id=ids.get(specials.get("bos")),
        eos_token_id=ids[specials["eos"]],
        pad_token_id=ids.get(specials.get("pad")),
        max_position_embeddings=4096,
        **sizes,
    )
    model = model_cls(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[t] for t in specials["stop"]],
        pad_token_id=ids.get(specials.get("pad")),
        bos_token_id=ids.get(specials.get("bos")),
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)


def make_tiny_backbones(out: str, seed: int = 0) -> dict[str, str]:
    """Build all four folders under `out` (idempotent: rebuilt identically from the seed) and return their paths."""
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    vision = {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "num_hidden_layers": 2, "num_attention_heads": 4}
    save_vision(
        out,
        "vision-siglip",
        SiglipVisionModel(SiglipVisionConfig(hidden_size=64, intermediate_size=128, vision_use_head=False, **vision)),
        SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
    )
    save_vision(
        out,
        "vision-clip",
        CLIPVisionModel(CLIPVisionConfig(hidden_size=48, intermediate_size=96, projection_dim=32, **vision)),
        CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
    )
    qwen_specials = {
        # Qwen2.5's tokenizer reserves vision tokens (<|image_pad|> is our image placeholder, inside the vocabulary).
        "all": [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ],
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "stop": ["<|im_end|>", "<|endoftext|>"],
    }
    # Head size 32 (96 / 3 heads) in both LLMs: vLLM's CPU attention only takes head sizes 32, 64, 80, 96, 112, 128...
    save_llm(
        out, "llm-qwen2", Qwen2Config, Qwen2ForCausalLM, qwen_specials, CHATML_TEMPLATE,
        hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
        tie_word_embeddings=True,
    )  # fmt: skip
    # Like the real Llama 3: no pad token (the processor pads with eos), untied head. Unlike it, no reserved special
    # tokens: this LLM stands for one with no image token to reuse, so the processor adds `<image>` to the tokenizer
    # (outside the embedding table) and tests cover that path; the reserved-token path is tested on its own.
    llama_specials = {
        "all": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "stop": ["<|eot_id|>", "<|end_of_text|>"],
    }
    save_llm(
        out, "llm-llama", LlamaConfig, LlamaForCausalLM, llama_specials, LLAMA3_TEMPLATE,
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    paths = {n: os.path.join(out, n) for n in ("vision-siglip", "vision-clip", "llm-qwen2", "llm-llama")}
    with open(os.path.join(out, "backbones.json"), "w") as f:
        json.dump({"seed": seed, **paths}, f, indent=2)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the four backbone folders into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in make_tiny_backbones(args.out, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
