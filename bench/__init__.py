"""Side-by-side benchmarks that print ratios; run each as `python -m bench.<name> [--quick] [--json OUT]`."""
