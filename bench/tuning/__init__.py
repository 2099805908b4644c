"""Optuna searches over a method's declared parameters (``bench tune``)."""
