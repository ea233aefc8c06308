"""The repack cache (`runtime/repack_cache.py`): a second start maps what the first packed, with the same logits;
a changed file, a damaged entry or the cache turned off are packed again."""

import mmap
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.model_file.weight_formats import CPU_NATIVE_FORMATS, FORMATS
from hybridinfer.runtime.repack_cache import RepackCache
from tiny_models import random_weights, write_tiny_gguf

IDS = [1, 5, 9, 2, 7]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "repack"
    monkeypatch.setenv("HYBRIDINFER_REPACK_CACHE", str(directory))
    return directory


# Q5_0: its fifth bits moved; the K-quants: decoded into tiles of their own (a 256-wide model: whole super-blocks)
@pytest.mark.parametrize("weight_type", [T.Q4_0, T.Q5_0] + [f.type for f in CPU_NATIVE_FORMATS if f.k_quant],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("exact", [False, True])
def test_second_start_maps_the_first_ones_packing(tmp_path, cache_dir, exact, weight_type):
    width = 256 if FORMATS[weight_type].k_quant else None
    weights = random_weights(seed=11, **({"n_embd": width, "n_ff": width} if width else {}))
    path = write_tiny_gguf(tmp_path / f"{weight_type.name}.gguf", weights, weight_type=weight_type, activation="relu")
    first = hybridinfer.load(str(path), exact=exact)
    assert not first.model.weights.from_cache and len(list(cache_dir.glob("*.bin"))) == 1
    second = hybridinfer.load(str(path), exact=exact)
    assert second.model.weights.from_cache
    np.testing.assert_array_equal(second.logits(IDS), first.logits(IDS))
    for engine in (first, second):  # the first run maps the entry it wrote too, dropping its own copies
        gate = engine.model.weights.layers[0].ffn_gate.data
        assert gate.flags.writeable and isinstance(memory_owner(gate), mmap.mmap)


def memory_owner(array):
    while isinstance(array, np.ndarray):
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_a_changed_file_or_a_damaged_entry_is_packed_again(tmp_path, cache_dir):
    path = write_tiny_gguf(tmp_path / "q8.gguf", random_weights(seed=12), weight_type=T.Q8_0)
    expected = hybridinfer.load(str(path)).logits(IDS)
    (entry,) = cache_dir.glob("*.bin")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    damaged = hybridinfer.load(str(path))
    assert not damaged.model.weights.from_cache
    np.testing.assert_array_equal(damaged.logits(IDS), expected)
    write_tiny_gguf(path, random_weights(seed=13), weight_type=T.Q8_0)  # same path, other weights
    os.utime(path, ns=(1, 1))
    changed = hybridinfer.load(str(path))
    assert not changed.model.weights.from_cache
    assert not np.array_equal(changed.logits(IDS), expected)
    assert len(list(cache_dir.glob("*.bin"))) == 1  # the stale entry of that file and mode is gone


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDINFER_REPACK_CACHE", "off")
    path = write_tiny_gguf(tmp_path / "q8.gguf", random_weights(seed=14), weight_type=T.Q8_0)
    assert RepackCache(path, b"", "dense").path is None
    for _ in range(2):
        assert not hybridinfer.load(str(path)).model.weights.from_cache


SECOND_START = """
import sys
import numpy as np
import hybridinfer
engine = hybridinfer.load(sys.argv[1])
print(engine.model.weights.from_cache, np.round(engine.logits([1, 5, 9, 2, 7])[-1, :4], 4).tolist())
"""


def test_a_fresh_process_runs_on_mapped_weights_and_cached_kernels(tmp_path, cache_dir):
    """Two processes, the second with every weight mapped and every kernel from numba's cache, so no parallel
    kernel runs before the first attention block: numba (#8578) starts its threading layer for a cached parallel
    function, not for a cached serial one that calls it, and such a call crashed until `kernels` starts it."""
    path = write_tiny_gguf(tmp_path / "q41.gguf", random_weights(seed=15), weight_type=T.Q4_1)
    runs = [subprocess.run([sys.executable, "-c", SECOND_START, str(path)], capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    (first_mapped, first), (second_mapped, second) = [run.stdout.split(" ", 1) for run in runs]
    assert (first_mapped, second_mapped) == ("False", "True") and first == second


def test_a_test_run_removes_the_repack_cache_it_made(tmp_path):
    """conftest.py gives a test run its own repack cache (GBs after a full run) and removes it when the run ends."""
    (tmp_path / "test_writes_there.py").write_text(
        "import os\n"
        "def test_it():\n"
        "    cache = os.environ['HYBRIDINFER_REPACK_CACHE']\n"
        "    open(os.path.join(cache, 'entry.bin'), 'wb').write(b'x' * 1000)\n"
        "    print('CACHE', cache)\n")
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    env = {k: v for k, v in os.environ.items() if k != "HYBRIDINFER_REPACK_CACHE"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])])
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-o", "addopts=",
                           str(tmp_path / "test_writes_there.py")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    cache = Path(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("CACHE")))
    assert cache.name.startswith("hybridinfer-repack-") and not cache.exists()
