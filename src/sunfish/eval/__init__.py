"""Evaluation: held-out likelihood, generation quality, infilling, translation, lm-eval adapter, reports."""
