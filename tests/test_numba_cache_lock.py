"""numba's disk cache, saved from several processes at once (a warmup beside a run): every entry keeps its own
data file (`kernels/__init__._serialize_cache_writes`)."""

import multiprocessing

import hybridinfer.kernels  # noqa: F401  (installs the locked save)
from numba.core.caching import IndexDataCacheFile


def save_entries(directory: str, worker: int) -> None:
    cache = IndexDataCacheFile(directory, "function", "stamp")
    for i in range(40):
        cache.save(f"key {worker} {i}", f"data {worker} {i}")


def test_concurrent_saves_keep_every_entry(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=save_entries, args=(str(tmp_path), w)) for w in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
        assert process.exitcode == 0
    cache = IndexDataCacheFile(str(tmp_path), "function", "stamp")
    for w in range(3):
        for i in range(40):
            assert cache.load(f"key {w} {i}") == f"data {w} {i}"
