"""`evaluate` module folder; load with `evaluate.load("metrics/abstention")`."""
