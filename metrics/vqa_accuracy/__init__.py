"""`evaluate` module folder; load with `evaluate.load("metrics/vqa_accuracy")`."""
