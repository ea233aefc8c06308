"""Typed reads of config.json values. json.loads accepts strings, nulls, NaN and Infinity wherever they
appear, so each read checks the type and range of its value and, if wrong, refuses it in one line that
names the key and what was expected, before any output file exists."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import HybridInferError
from .json_file import shown

REQUIRED = object()
MAX_COUNT = 2**31 - 1  # GGUF stores sizes and counts as 32-bit integers; llama.cpp reads them as int32
MAX_FLOAT32 = 3.4028234663852886e38  # GGUF stores these hyper-parameters as float32


class ConfigValues:
    def __init__(self, config: dict, path: Path, prefix: str = ""):
        self.config, self.path = config, path
        self.prefix = prefix  # "rope_scaling." for a section's values: how messages name the key

    def section(self, key: str) -> "ConfigValues | None":
        """The values of a nested object (rope_scaling), or None when the key is absent or null."""
        value = self.config.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(key, value, "an object")
        return ConfigValues(value, self.path, f"{self.prefix}{key}.")

    def count(self, key: str, default=REQUIRED) -> int:
        """A size or count: a positive integer (not 64.0, "64", true or null)."""
        value = self._get(key, default)
        if not _is_int(value) or value <= 0:
            raise self._bad(key, value, "a positive integer")
        if value > MAX_COUNT:
            raise self._bad(key, value, f"at most {MAX_COUNT}")
        return value

    def number(self, key: str, default=REQUIRED, *, positive: bool = True) -> float:
        """A finite float32-representable number, > 0 (or >= 0 with positive=False)."""
        value = self._get(key, default)
        in_range = _is_number(value) and abs(value) <= MAX_FLOAT32 and (value > 0 if positive else value >= 0)
        if not in_range:
            raise self._bad(key, value, f"a finite number {'> 0' if positive else '>= 0'} (a float32)")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, value, "true or false")
        return value

    def text(self, key: str) -> str | None:
        """A string, or None when the key is absent or null."""
        value = self.config.get(key)
        if value is not None and not isinstance(value, str):
            raise self._bad(key, value, "a string")
        return value

    def names(self, key: str) -> list[str]:
        """A list of strings (e.g. architectures); [] when absent or null."""
        value = self.config.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._bad(key, value, "a list of strings")
        return value

    def token_id(self, key: str) -> int | None:
        """A token id, or the first of a non-empty list of them (eos_token_id), or None when absent or null."""
        value = self.config.get(key)
        if value is None:
            return None
        ids = value if isinstance(value, list) else [value]
        if not ids or not all(_is_int(token_id) for token_id in ids):
            raise self._bad(key, value, "a token id (an integer or a list of integers)")
        return ids[0]

    def _get(self, key: str, default):
        if key in self.config:
            return self.config[key]
        if default is REQUIRED:
            raise HybridInferError(f"{self.path} lacks the key {self.prefix + key!r}; the checkpoint is incomplete")
        return default

    def _bad(self, key: str, value, expected: str) -> HybridInferError:
        return HybridInferError(f"{self.path}: {self.prefix}{key} must be {expected}, got {shown(value)}; "
                                "correct config.json or download it again")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))
