"""Train Mini-LLaVA on TRL's SFTTrainer from recipes; later recipe files overlay earlier ones, flags win.

    accelerate launch run_sft.py recipes/stage2.yaml --learning_rate 1e-4
    python run_sft.py recipes/stage2.yaml recipes/stage3/lora_r8.yaml

The recipe owns policy (which modules train, which data, where artefacts go); recipes/ builds the run from it.
"""

import logging
import sys

from recipes import build_trainer, parse_recipe, train


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_recipe(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING)
    trainer = build_trainer(model_args, data_args, training_args)
    return train(trainer)


if __name__ == "__main__":
    main()
