"""matplotlib for the --plot options, loaded when a plot is drawn (it is an optional extra)."""

from __future__ import annotations

from .errors import HybridInferError


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; a one-line error naming the install when it is missing."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise HybridInferError("--plot needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
