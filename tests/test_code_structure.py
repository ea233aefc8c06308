"""The package's shape, as the assembly issue set it: no import cycle (lazy and type-checking imports counted), no
numba block with more than 8 arguments, and each fact about files written in one module (tensor names, bytes per
quantized block)."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hybridinfer"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its file (inside functions and `if TYPE_CHECKING:` too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import x` imports x, not the package around it
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in modules and module != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycle_counting_lazy_imports():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    graph["hybridinfer"] = set()  # the package's __init__ re-exports the API; nothing inside imports it back
    assert _cycles(graph) == []


def _numba_blocks(path: Path):
    """(name, argument count) of every function decorated with njit or a `specialization` (numba) in `path`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                called = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
                if name in ("njit", "jit", "specialization"):
                    yield node.name, len(node.args.args)


def test_no_numba_block_takes_more_than_8_arguments():
    blocks = [(path.name, name, count) for path in (PACKAGE / "kernels").glob("*layer*.py")
              for name, count in _numba_blocks(path)]
    assert blocks, "no layer blocks found"
    assert [block for block in blocks if block[2] > 8] == []


def _string_literals(path: Path) -> list[str]:
    """The strings a module's code holds, docstrings aside (those may describe a file's layout)."""
    tree, docstrings = ast.parse(path.read_text()), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(id(node.body[0].value))
    strings = []
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            strings.append("".join(part.value for part in node.values if isinstance(part, ast.Constant)))
    return strings


# a GGUF tensor's name or a part of one: "blk." (with anything around it), or a layer tensor's own name
TENSOR_PART = re.compile(r"\.?(attn_(q|k|v|qkv|output|norm)|ffn_(gate|up|down|gate_up|norm)|token_embd|output_norm|"
                         r"fc1|fc2)(_t)?(\.weight)?")


def _names_a_tensor(text: str) -> bool:
    return "blk." in text or TENSOR_PART.fullmatch(text) is not None


def test_tensor_names_are_written_in_one_module():
    holders = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
               if any(_names_a_tensor(text) for text in _string_literals(path))}
    assert len(holders) <= 1, sorted(holders)
