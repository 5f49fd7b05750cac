"""`evaluate` module folder; load with `evaluate.load("metrics/exact_match")`."""
