"""Shared pieces of the commands that set up the hybrid runtime."""

from __future__ import annotations


def load_predictor_set(predictors_path: str | None, engine):
    """The predictors that will run beside the model (they take GPU memory too), or None."""
    if not predictors_path:
        return None
    from ..predictors.file import load_predictors
    return load_predictors(predictors_path, engine.fingerprint)
