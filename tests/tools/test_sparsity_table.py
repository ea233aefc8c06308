"""tools/sparsity_table.py on a tiny SiLU model: the quality pass writes the sparsity files and its rows (no decode
rates with --repetitions 0), and --speed-only times those files without calibrating again."""

import sys

import pytest

from tiny_models import random_weights, write_tiny_gguf
from tools import sparsity_table


def run(monkeypatch, *arguments):
    monkeypatch.setattr(sys, "argv", ["sparsity_table.py", *map(str, arguments)])
    sparsity_table.main()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "silu.gguf", random_weights(seed=5, n_ff=256),
                           context_length=512)


def test_quality_then_speed_passes(model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    run(monkeypatch, "-m", model, "--out", out, "--tokens", 300, "--targets", "0.4", "--modes", "cats,teal-greedy",
        "--repetitions", 0)
    rows = (out / "silu.gguf.quality.md").read_text().splitlines()
    assert len(rows) == 4 and rows[2].startswith("| silu.gguf | cats 40% |") and "| teal-greedy 40% |" in rows[3]
    assert {p.name for p in out.glob("*.sparsity.gguf")} == {"silu.gguf.cats-40.sparsity.gguf",
                                                             "silu.gguf.teal-greedy-40.sparsity.gguf"}
    assert not (out / "silu.gguf.speed.md").exists()
    printed = capsys.readouterr().out.splitlines()
    assert printed == rows
    calibrated = {p: p.stat().st_mtime_ns for p in out.glob("*.sparsity.gguf")}

    run(monkeypatch, "-m", model, "--out", out, "--targets", "0.4", "--modes", "cats,teal-greedy", "--speed-only",
        "--repetitions", 1, "--n-gen", 4)
    speed = (out / "silu.gguf.speed.md").read_text().splitlines()
    assert len(speed) == 4 and speed[3].startswith("| silu.gguf | teal-greedy 40% |") and speed[3].endswith("x |")
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.sparsity.gguf")} == calibrated  # not calibrated again


def test_speed_only_without_files_says_what_to_run(model, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="run the quality pass"):
        run(monkeypatch, "-m", model, "--out", tmp_path, "--modes", "wina", "--speed-only")


def test_unknown_mode_is_one_line_error(model, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="unknown modes relu"):
        run(monkeypatch, "-m", model, "--out", tmp_path, "--modes", "relu")
