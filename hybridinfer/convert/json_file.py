"""The JSON files of a Hugging Face checkpoint (config.json, the shard index, the tokenizer files): each must
be a JSON object; anything else is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import HybridInferError

_REPLACE = "replace it with the checkpoint's original file"
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def read_json_object(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except json.JSONDecodeError as exc:
        raise HybridInferError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); {_REPLACE}") from None
    except UnicodeDecodeError:
        raise HybridInferError(f"{path} is not valid JSON (not UTF-8 text); {_REPLACE}") from None
    except ValueError:  # an integer beyond Python's 4300-digit conversion limit
        raise HybridInferError(f"{path} is not usable JSON (a number in it is too long); {_REPLACE}") from None
    except RecursionError:
        raise HybridInferError(f"{path} is not usable JSON (nested too deeply); {_REPLACE}") from None
    except OSError as exc:
        raise HybridInferError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(value, dict):
        raise HybridInferError(f"{path} holds {_JSON_TYPES[type(value)]}, not a JSON object; {_REPLACE}")
    return value


def shown(value, limit: int = 40) -> str:
    """A JSON value as it appears in the file, on one line and shortened: for error messages."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
