"""The instruction-set switch: which target numba compiles the kernels for, what the `simd_*` intrinsics emit for it,
where its compiled kernels are cached, and the one-line error for a value that names none. Each case is a fresh process:
the target is fixed before the first kernel compiles. (The kernels' own tests run under the AVX2 and generic
builds in CI: `make test-targets`.)"""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json
from numba.core import config
from hybridinfer import kernels
from hybridinfer.kernels import simd_dot, simd_planes
from hybridinfer.kernels.cpu_target import TARGET
print(json.dumps({"name": TARGET.name, "cpu": config.CPU_NAME, "features": config.CPU_FEATURES,
                  "vnni512": simd_dot.VNNI_512, "vnni256": simd_dot.VNNI_256, "madd512": simd_dot.MADD_512,
                  "madd256": simd_dot.MADD_256, "permute512": simd_planes.PERMUTE_512,
                  "biased": simd_dot.SIGNED_DOT_BY_BIAS,
                  "cache": kernels._cache_dir()}))
"""


def probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("HYBRIDINFER_CPU", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def test_avx2_switch_compiles_for_haswell_with_256_bit_maddubs():
    avx2 = probe(HYBRIDINFER_CPU="avx2")
    assert (avx2["cpu"], avx2["features"]) == ("haswell", "")
    assert avx2["madd256"] and not (avx2["vnni512"] or avx2["vnni256"] or avx2["madd512"] or avx2["permute512"])
    assert not avx2["biased"]
    assert avx2["cache"].endswith(avx2["cache"].rsplit("-", 1)[1]) and "-avx2-" in avx2["cache"]


def test_numba_cpu_name_alone_means_that_cpu_not_the_host():
    named = probe(NUMBA_CPU_NAME="haswell")
    assert named["name"] == "haswell" and named["features"] == "" and named["madd256"]


@pytest.mark.parametrize("level, flag", [("avx-vnni", "vnni256"), ("avx512", "madd512"), ("avx512-vnni", "vnni512")])
def test_each_level_picks_its_dot_product(level, flag):
    flags = probe(HYBRIDINFER_CPU=level)
    chosen = [name for name in ("vnni512", "vnni256", "madd512", "madd256") if flags[name]]
    assert chosen == [flag]
    assert flags["biased"] == flag.startswith("vnni")


def test_generic_target_uses_no_x86_intrinsics_and_its_own_cache():
    generic, host = probe(HYBRIDINFER_CPU="generic"), probe()
    assert not any(generic[k] for k in ("vnni512", "vnni256", "madd512", "madd256", "permute512"))
    assert generic["cache"] != host["cache"]
    assert host["name"].startswith("host-")


def test_an_unknown_instruction_set_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hybridinfer", "generate", "-m", "models/prosparse-tiny.q8_0.gguf",
                           "-p", "hi", "-n", "1"], env={**os.environ, "HYBRIDINFER_CPU": "avx9000"},
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: HYBRIDINFER_CPU='avx9000' is not an instruction set: use one of host, avx512-vnni, avx512, avx-vnni, "
        "avx2, generic"]


HALVES = """
import numpy as np
from numba import njit
from hybridinfer.kernels.simd_half import as_float32
from hybridinfer.kernels.simd_memory import load_f16_bytes, store_f32

@njit
def widened(bits, out):
    for i in range(bits.shape[0]):
        out[i] = as_float32(bits[i])

@njit
def widened_vectors(raw, out):
    for i in range(0, out.shape[0], 16):
        store_f32(out, i, load_f16_bytes(raw, 2 * i, 16), 16)

bits = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
expected = bits.view(np.float16).astype(np.float32)
scalar, vector = np.empty(bits.shape, np.float32), np.empty(bits.shape, np.float32)
widened(bits, scalar)
widened_vectors(bits.view(np.uint8), vector)
for got in (scalar, vector):
    assert np.array_equal(got, expected, equal_nan=True), np.flatnonzero(~((got == expected) | np.isnan(expected)))[:5]
print("ok")
"""


@pytest.mark.parametrize("level", ["generic", "host"])
def test_every_half_float_widens_exactly(level):
    """Every one of the 65536 f16 bit patterns (subnormals, infinities, NaNs) as numpy widens it, scalar and 16 at
    a time: by vcvtph2ps on the host, by integer arithmetic on the generic target (no libcall to link)."""
    env = {**os.environ, "HYBRIDINFER_CPU": level}
    done = subprocess.run([sys.executable, "-c", HALVES], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
