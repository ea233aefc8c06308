"""The stdlib corpus: docstrings and comments in source order, prose-only comments, a fixed split."""

from hybridinfer.text import corpus

SOURCE = '''#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""Module docstring."""

# A comment block
# on two lines.
x = 1  # type: ignore

class Thing:
    """Class docstring.

        Indented detail."""

    def method(self):  # pragma: no cover
        """Method docstring."""
        # ----------------
        return 2  # trailing prose comment
'''


def test_docstrings_and_comments_in_source_order():
    assert corpus.source_documents(SOURCE) == [
        "Module docstring.",
        "A comment block\non two lines.",
        "Class docstring.\n\nIndented detail.",
        "Method docstring.",
        "trailing prose comment",
    ]


def test_unparsable_source_still_yields_its_comments():
    assert corpus.source_documents("# a note\nprint 'python 2'\n") == ["a note"]


def test_split_is_a_fixed_function_of_the_unit():
    units = [f"stdlib/module_{i}.py" for i in range(2000)]
    splits = [corpus.split_of(unit) for unit in units]
    assert splits == [corpus.split_of(unit) for unit in units]
    shares = {name: splits.count(name) / len(units) for name in corpus.SPLITS}
    assert 0.03 < shares["validation"] < 0.08 and 0.03 < shares["test"] < 0.08


def test_user_text_files_become_paragraph_documents(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph\nstill first.\n\n\nSecond one.\n")
    documents = corpus.user_documents(str(path))
    assert [d.text for d in documents] == ["First paragraph\nstill first.", "Second one."]
    assert {d.unit for d in documents} == {"user/notes.txt#0"}


def test_stdlib_file_list_is_sorted_and_skips_tests(tmp_path):
    package = tmp_path / "json"
    (package / "tests").mkdir(parents=True)
    for name in ("z.py", "a.py", "__init__.py", "tests/test_x.py"):
        (package / name).write_text('"""doc"""\n')
    (tmp_path / "abc.py").write_text('"""abc doc"""\n')
    files, missing = corpus.stdlib_source_files(str(tmp_path))
    assert [relative for _, relative in files] == ["abc.py", "json/__init__.py", "json/a.py", "json/z.py"]
    assert "argparse" in missing
    built = corpus.build_corpus(stdlib_dir=str(tmp_path))
    assert sorted(built.train + built.validation + built.test) == ["abc doc", "doc", "doc", "doc"]
