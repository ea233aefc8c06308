"""A pytest plugin (`pytest -p tools.hide_server_deps`) that makes importing the server's dependencies (pydantic,
FastAPI, uvicorn) fail, as on a GPU machine whose Python lacks them: `tools/gpu_check.py` collects the GPU tests so,
and a test that needs them fails to import instead of passing here only."""

from __future__ import annotations

import importlib.abc
import sys

HIDDEN = ("pydantic", "pydantic_core", "fastapi", "starlette", "uvicorn")


class HiddenServerDependencies(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tools/hide_server_deps.py)", name=name)
        return None


for _name in [name for name in sys.modules if name.split(".")[0] in HIDDEN]:
    del sys.modules[_name]
sys.meta_path.insert(0, HiddenServerDependencies())
