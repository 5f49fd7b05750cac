"""Train Mini-LLaVA on TRL's SFTTrainer from recipes; later recipe files overlay earlier ones, flags win.

    accelerate launch run_sft.py recipes/stage2.yaml --learning_rate 1e-4
    python run_sft.py recipes/stage2.yaml recipes/stage3/lora_r8.yaml

The recipe owns policy (which modules train, which data, where artefacts go); `recipes.run` builds the run from it
(the one entry point: tests and scripts call it as a function).
"""

import sys

from recipes import run

if __name__ == "__main__":
    run(sys.argv[1:])
