"""A text corpus that exists offline on every machine: the Python standard library's docstrings and comments.

Extraction is deterministic for a given Python version: a fixed list of stdlib modules and packages, their
source files in sorted order, docstrings found with `ast` and comment blocks found with `tokenize`, both in
source-line order. Each docstring or comment block is one document. The help topics pydoc ships with the
stdlib (`pydoc_data/topics.py`, the language reference's prose, read with `ast`, not imported) are added,
one document per topic. Text files the user gives are added as documents too (paragraphs separated by
blank lines).

The held-out split is fixed by a hash of each document's *unit* (a stdlib source file, or a block of
`USER_LINES_PER_UNIT` lines of a user file), so a whole file's docstrings land on one side of the split:
    crc32(unit) % 100 <  VALIDATION_PERCENT                      -> validation (checkpoint curves, threshold sweep)
    crc32(unit) % 100 <  VALIDATION_PERCENT + TEST_PERCENT       -> test (the perplexities in the report)
    otherwise                                                    -> train
"""

from __future__ import annotations

import ast
import io
import os
import sysconfig
import tokenize
import zlib
from dataclasses import dataclass, field

from .files import MAX_CORPUS_BYTES, read_text_file

# Top-level stdlib modules and packages read, in this order (those missing from the running Python are
# skipped and listed in `Corpus.missing_modules`). Test packages, demos and vendored wheels are left out.
STDLIB_MODULES = (
    "__future__", "_collections_abc", "_compression", "_markupbase", "_pydecimal", "_pyio", "_strptime",
    "_threading_local", "_weakrefset", "abc", "argparse", "ast", "asyncio", "base64", "bdb", "bisect",
    "bz2", "calendar", "cmd", "code", "codecs", "codeop", "collections", "colorsys", "compileall",
    "concurrent", "configparser", "contextlib", "contextvars", "copy", "copyreg", "csv", "ctypes",
    "curses", "dataclasses", "datetime", "dbm", "decimal", "difflib", "dis", "doctest", "email", "enum",
    "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "genericpath", "getopt",
    "getpass", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "http",
    "idlelib", "imaplib", "importlib", "inspect", "io", "ipaddress", "json", "keyword", "lib2to3", "linecache", "locale",
    "logging", "lzma", "mailbox", "mimetypes", "modulefinder", "multiprocessing", "netrc", "ntpath",
    "numbers", "opcode", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools",
    "pkgutil", "platform", "plistlib", "poplib", "posixpath", "pprint", "profile", "pstats", "pty",
    "py_compile", "pyclbr", "pydoc", "queue", "quopri", "random", "re", "reprlib", "rlcompleter", "runpy",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "site", "smtplib", "socket",
    "socketserver", "sqlite3", "sre_compile", "sre_constants", "sre_parse", "ssl", "stat", "statistics",
    "string", "stringprep", "struct", "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tkinter", "token", "tokenize", "tomllib", "trace",
    "traceback", "tracemalloc", "tty", "turtle", "types", "typing", "unittest", "urllib", "uuid", "venv",
    "warnings", "wave", "weakref", "webbrowser", "wsgiref", "xml", "xmlrpc", "zipapp", "zipfile",
    "zipimport", "zoneinfo",
)
SKIPPED_DIRECTORIES = ("test", "tests", "idle_test", "__pycache__")
PYDOC_TOPICS_FILE = "pydoc_data/topics.py"
VALIDATION_PERCENT = 5
TEST_PERCENT = 5
USER_LINES_PER_UNIT = 200
SPLITS = ("train", "validation", "test")


@dataclass
class Document:
    text: str
    unit: str  # what the split is decided by: "stdlib/<relative path>" or "user/<file>#<block>"


@dataclass
class Corpus:
    train: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    missing_modules: list[str] = field(default_factory=list)
    n_source_files: int = 0

    def split(self, name: str) -> list[str]:
        return getattr(self, name)

    def n_chars(self, name: str) -> int:
        return sum(len(text) for text in self.split(name))


def split_of(unit: str) -> str:
    bucket = zlib.crc32(unit.encode("utf-8")) % 100
    if bucket < VALIDATION_PERCENT:
        return "validation"
    if bucket < VALIDATION_PERCENT + TEST_PERCENT:
        return "test"
    return "train"


def stdlib_source_files(stdlib_dir: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """(absolute path, path relative to the stdlib) of every source file of STDLIB_MODULES, and the missing names."""
    stdlib_dir = stdlib_dir or sysconfig.get_paths()["stdlib"]
    files, missing = [], []
    for name in STDLIB_MODULES:
        module_file = os.path.join(stdlib_dir, name + ".py")
        package_dir = os.path.join(stdlib_dir, name)
        if os.path.isfile(module_file):
            files.append(module_file)
        elif os.path.isdir(package_dir):
            for root, dirs, names in os.walk(package_dir):
                dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRECTORIES)
                files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(".py"))
        else:
            missing.append(name)
    return [(path, os.path.relpath(path, stdlib_dir).replace(os.sep, "/")) for path in files], missing


def _is_prose_comment(line: str) -> bool:
    lowered = line.lower()
    if lowered.startswith(("!", "-*-", "noqa", "type:", "pragma", "fmt:", "pylint")) or "coding:" in lowered:
        return False
    return any(ch.isalpha() for ch in line)


def comment_blocks(source: str) -> list[tuple[int, str]]:
    """(first line, text) of each run of comments on consecutive lines, '#' and indentation removed."""
    blocks: list[tuple[int, list[str]]] = []
    last_line = -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            line_no = tok.start[0]
            text = tok.string.lstrip("#").strip()
            if not _is_prose_comment(text):
                last_line = -2
                continue
            if line_no == last_line + 1 and blocks:
                blocks[-1][1].append(text)
            else:
                blocks.append((line_no, [text]))
            last_line = line_no
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return [(line, "\n".join(lines)) for line, lines in blocks]


def docstrings(source: str) -> list[tuple[int, str]]:
    """(line, cleaned text) of the module, class and function docstrings."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=True)
            if text and text.strip():
                found.append((node.body[0].lineno, text.strip()))
    return found


def source_documents(source: str) -> list[str]:
    """Docstrings and comment blocks of one Python source, in source-line order."""
    items = docstrings(source) + comment_blocks(source)
    items.sort(key=lambda item: item[0])
    return [text for _, text in items]


def pydoc_topic_documents(stdlib_dir: str) -> list[Document]:
    """One document per help topic of pydoc_data/topics.py (a dict literal of strings), in file order."""
    path = os.path.join(stdlib_dir, PYDOC_TOPICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    documents = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    documents.append(Document(value.value.strip(), f"pydoc_topics/{key.value}"))
    return documents


def user_documents(path: str) -> list[Document]:
    """Paragraphs (blank-line separated) of a text file; its split units are blocks of USER_LINES_PER_UNIT lines."""
    lines = read_text_file(path, "the corpus file", MAX_CORPUS_BYTES, errors="replace").splitlines()
    documents, paragraph, start = [], [], 0
    name = os.path.basename(path)
    for index, line in enumerate(lines + [""]):
        if line.strip():
            if not paragraph:
                start = index
            paragraph.append(line.rstrip())
        elif paragraph:
            documents.append(Document("\n".join(paragraph), f"user/{name}#{start // USER_LINES_PER_UNIT}"))
            paragraph = []
    return documents


def build_corpus(extra_files: list[str] | None = None, stdlib_dir: str | None = None,
                 include_stdlib: bool = True) -> Corpus:
    corpus = Corpus()
    documents: list[Document] = []
    if include_stdlib:
        stdlib_dir = stdlib_dir or sysconfig.get_paths()["stdlib"]
        files, corpus.missing_modules = stdlib_source_files(stdlib_dir)
        corpus.n_source_files = len(files)
        for path, relative in files:
            with open(path, "rb") as handle:
                raw = handle.read()
            try:
                encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
                source = raw.decode(encoding)
            except (SyntaxError, UnicodeDecodeError, LookupError):
                continue
            documents.extend(Document(text, "stdlib/" + relative) for text in source_documents(source))
        documents.extend(pydoc_topic_documents(stdlib_dir))
    for path in extra_files or []:
        documents.extend(user_documents(path))
        corpus.n_source_files += 1
    for document in documents:
        corpus.split(split_of(document.unit)).append(document.text)
    return corpus
