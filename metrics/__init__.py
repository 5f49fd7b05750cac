"""Evaluation metrics of Mini-LLaVA: one `evaluate` module per folder, loadable offline."""
