"""`evaluate` module folder; load with `evaluate.load("metrics/selective_vqa")`."""
