"""Evaluate a Mini-LLaVA model (or a PEFT adapter on it) on one dataset split: the dataset's metric, abstention and
selective-prediction metrics, a failure gallery, a risk-coverage plot and the model card (metrics/evaluation.py).

    python run_eval.py --model outputs/offline/final --dataset data/synthetic --split test --threshold_split validation
    python run_eval.py eval.yaml more.yaml --max_samples 10   (YAML recipes compose left to right, flags win)
"""

from metrics.evaluation import main

if __name__ == "__main__":
    main()
