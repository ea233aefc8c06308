"""Shared pieces of the commands that set up the hybrid runtime."""

from __future__ import annotations


def predictor_params(predictors_path: str | None, engine) -> int:
    """Parameters of the predictors that will run beside the model (they take GPU memory too)."""
    if not predictors_path:
        return 0
    from predictors.file import load_predictors
    return load_predictors(predictors_path, engine.fingerprint).n_params
