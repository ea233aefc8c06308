"""Activation predictors: small per-layer networks that guess which FFN neurons fire for a token."""
