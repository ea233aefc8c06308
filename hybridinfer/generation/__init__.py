"""The generation loop, sampling and stop strings."""
