"""`evaluate` module folder; load with `evaluate.load("metrics/relaxed_accuracy")`."""
