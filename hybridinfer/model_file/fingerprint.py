"""A model fingerprint, stored in every per-model artefact (activation counts, predictors, splits) so that a
file made for another model is refused.

Two parts:
  shape  exact: architecture, layer count, widths, vocabulary size
  probe  64 numbers: FFN gate rows 0..31 of the first and the last layer, each dotted with a fixed random
         unit vector. Quantizing a model moves them only slightly, so the files of one model work with all
         its quantizations, while another model's probe is uncorrelated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .dequantize import dequantize_rows
from ..errors import HybridInferError
from .gguf_file import GGUFFile
from .tensor_shapes import FFN_GATE, tensor_name

SHAPE_KEY = "hybridinfer.fingerprint.shape"
PROBE_KEY = "hybridinfer.fingerprint.probe"
PROBE_ROWS = 32
MIN_CORRELATION = 0.98
SHAPE_PATTERN = re.compile(r"[a-z0-9_]+(:[1-9][0-9]{0,9}){4}")


@dataclass(frozen=True)
class Fingerprint:
    shape: str
    probe: tuple[float, ...]

    @classmethod
    def of_model(cls, model: GGUFFile, config: ModelConfig) -> "Fingerprint":
        shape = f"{config.architecture}:{config.n_layer}:{config.n_embd}:{config.n_ff}:{config.n_vocab}"
        direction = np.random.default_rng(0).standard_normal(config.n_embd).astype(np.float32)
        direction /= np.linalg.norm(direction)
        probe = []
        for layer in sorted({0, config.n_layer - 1}):
            rows = dequantize_rows(model.tensor(tensor_name(FFN_GATE, layer)), PROBE_ROWS)
            probe.extend((rows @ direction).tolist())
        return cls(shape, tuple(float(v) for v in probe))

    @classmethod
    def from_file(cls, file: GGUFFile) -> "Fingerprint":
        """The fingerprint a per-model artefact stores, checked for form (not yet against any model)."""
        if SHAPE_KEY not in file.metadata or PROBE_KEY not in file.metadata:
            raise HybridInferError(f"{file.path} has no model fingerprint; it was not made by hybridinfer for a model")
        shape = file.text(SHAPE_KEY)
        if not SHAPE_PATTERN.fullmatch(shape):
            raise HybridInferError(f"{file.path}: metadata {SHAPE_KEY} is {shape!r:.60}, expected "
                                   "ARCH:LAYERS:EMBD:FF:VOCAB; the file is corrupt: make it again")
        return cls(shape, tuple(file.numbers(PROBE_KEY)))

    @property
    def dimensions(self) -> tuple[int, int, int]:
        """(n_layer, n_embd, n_ff) of the model this fingerprint is of."""
        parts = self.shape.split(":")
        return int(parts[-4]), int(parts[-3]), int(parts[-2])

    def write(self, writer) -> None:
        writer.add_string(SHAPE_KEY, self.shape)
        writer.add_array(PROBE_KEY, [float(v) for v in self.probe])

    def check_matches(self, model_fingerprint: "Fingerprint", path: str, what: str) -> None:
        """Raise a one-line error unless this (a file's) fingerprint is the model's."""
        if self.shape != model_fingerprint.shape:
            raise HybridInferError(f"{path} is {what} for a model of shape {self.shape}, but this model is "
                                   f"{model_fingerprint.shape}; make it for this model")
        a, b = np.array(self.probe), np.array(model_fingerprint.probe)
        if a.shape != b.shape:
            raise HybridInferError(f"{path} is {what} whose fingerprint has {a.size} probe values, not this model's "
                                   f"{b.size}: it is corrupt or for another model; make it for this model")
        correlation = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float(np.allclose(a, b))
        if correlation < MIN_CORRELATION:
            raise HybridInferError(f"{path} is {what} for another model with the same shape (weights differ); "
                                   "make it for this model")


def open_model_artefact(path, arch: str, what: str, command: str,
                        model_fingerprint: Fingerprint | None = None) -> tuple[GGUFFile, Fingerprint]:
    """A per-model artefact's GGUF (`general.architecture` `arch`) and its fingerprint; with `model_fingerprint`,
    one made for another model is refused. `what` names the kind ("a split file"), `command` what makes it."""
    file = GGUFFile(path)
    if file.architecture != arch:
        raise HybridInferError(f"{path} is not {what} (made by `{command}`)")
    fingerprint = Fingerprint.from_file(file)
    if model_fingerprint is not None:
        fingerprint.check_matches(model_fingerprint, str(path), what)
    return file, fingerprint
