"""Mini-LLaVA: a small, honest recipe for LLaVA-style document/UI vision-language models."""

import pathlib

from setuptools import find_packages, setup

# Tested ranges: transformers/trl/peft rename arguments between minors, so they are pinned to the minor we test.
CORE = ["torch>=2.4,<2.14", "transformers>=5.24,<5.25", "pillow>=10", "numpy>=1.26"]
DATA = ["datasets>=5.2,<5.3", "imagehash>=4.3", "tqdm"]
TRAIN = [
    "trl>=1.16,<1.17",
    "peft>=0.21,<0.22",
    "accelerate>=1.15,<1.16",
    "bitsandbytes>=0.50,<0.51",
    "mlflow>=3.17,<3.18",
    "pyyaml",
] + DATA
DEEPSPEED = ["deepspeed>=0.19.8,<0.20"]
EVAL = ["evaluate>=0.4.6,<0.5", "matplotlib>=3.8", "huggingface_hub>=1.0", "scipy>=1.11"] + DATA
DEMO = ["gradio>=6.31,<6.32"]
SERVE = ["gguf>=0.19,<0.20"]  # scripts/export_gguf.py (llama.cpp); the engines live in their own venvs
DEV = sorted(set(TRAIN + DEEPSPEED + EVAL + DEMO + SERVE + ["pytest>=9", "ruff", "playwright>=1.50"]))

setup(
    name="minillava",
    version="0.1.0",
    description="LLaVA-style vision-language models for documents and UI screenshots, on the Hugging Face stack",
    long_description=pathlib.Path("README.md").read_text() if pathlib.Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(
        include=["modeling_minillava", "processing", "data_scripts", "metrics", "metrics.*", "recipes"]
    ),
    py_modules=["run_sft", "run_eval"],
    install_requires=CORE,
    extras_require={
        "data": DATA,
        "train": TRAIN,
        "deepspeed": DEEPSPEED,
        "eval": EVAL,
        "demo": DEMO,
        "serve": SERVE,
        "dev": DEV,
    },
)
