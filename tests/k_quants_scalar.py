"""The plain twin of convert/k_quants.py: llama.cpp's reference K-quant encoders transcribed one scalar at a time,
loop for loop as ggml-quants.c writes them (`quantize_row_q{4,5,6}_K_ref`, `make_qkx2_quants`, `make_qx_quants`,
`nearest_int`), with numpy float32 scalars so every operation rounds as C's float does. Slow: the tests run it on a
few blocks and compare bytes with the vectorized encoders."""

import numpy as np

F = np.float32


def nearest_int(value) -> int:
    bits = int(np.array([F(value) + F(12582912.0)], dtype=np.float32).view(np.int32)[0])
    return (bits & 0x007FFFFF) - 0x00400000


def f16_round_trip(value) -> tuple[bytes, F]:
    half = np.array([value], dtype=np.float32).astype(np.float16)
    return half.tobytes(), F(half[0])


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep):
    n = len(x)
    levels, aux = [0] * n, [0] * n
    low, high, sum_w = x[0], x[0], weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < low:
            low = x[i]
        if x[i] > high:
            high = x[i]
        sum_w += weights[i]
        sum_x += weights[i] * x[i]
    if low > 0:
        low = F(0)
    if high == low:
        return [0] * n, F(0), -low
    iscale = F(nmax) / (high - low)
    scale = F(1) / iscale
    best_error = F(0)
    for i in range(n):
        levels[i] = max(0, min(nmax, nearest_int(iscale * (x[i] - low))))
        diff = scale * F(levels[i]) + low - x[i]
        best_error += weights[i] * (diff * diff)
    for step in range(nstep + 1):
        iscale = (F(rmin) + F(rdelta) * F(step) + F(nmax)) / (high - low)
        sum_l = sum_l2 = sum_xl = F(0)
        for i in range(n):
            level = max(0, min(nmax, nearest_int(iscale * (x[i] - low))))
            aux[i] = level
            sum_l += weights[i] * F(level)
            sum_l2 += weights[i] * F(level) * F(level)
            sum_xl += weights[i] * F(level) * x[i]
        det = sum_w * sum_l2 - sum_l * sum_l
        if det > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            if this_min > 0:
                this_min = F(0)
                this_scale = sum_xl / sum_l2
            error = F(0)
            for i in range(n):
                diff = this_scale * F(aux[i]) + this_min - x[i]
                error += weights[i] * (diff * diff)
            if error < best_error:
                levels, best_error, scale, low = list(aux), error, this_scale, this_min
    return levels, scale, -low


def make_qx_quants(x, nmax):
    """rmse_type 1 (weights x*x), no quant weights."""
    n = len(x)
    peak = amax = F(0)
    for i in range(n):
        if abs(x[i]) > amax:
            amax, peak = abs(x[i]), x[i]
    if amax < F(1e-15):
        return [0] * n, F(0)

    def fit(iscale):
        levels, sumlx, suml2 = [], F(0), F(0)
        for i in range(n):
            level = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            levels.append(level + nmax)
            weight = x[i] * x[i]
            sumlx += weight * x[i] * F(level)
            suml2 += weight * F(level) * F(level)
        return levels, sumlx, suml2

    levels, sumlx, suml2 = fit(F(-nmax) / peak)
    scale = sumlx / suml2 if suml2 != 0 else F(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        trial, sumlx, suml2 = fit(-(F(nmax) + F(0.1) * F(step)) / peak)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            levels, scale = trial, sumlx / suml2
            best = scale * sumlx
    return levels, scale


def _affine_block(x, nmax, rmin, rdelta, nstep):
    levels, scales, mins = [], [], []
    for j in range(8):
        sub = x[32 * j:32 * j + 32]
        sum_x2 = F(0)
        for value in sub:
            sum_x2 += value * value
        av_x = F(np.sqrt(sum_x2 / F(32)))
        weights = [av_x + abs(value) for value in sub]
        level, scale, minimum = make_qkx2_quants(sub, weights, nmax, rmin, rdelta, nstep)
        levels += level
        scales.append(scale)
        mins.append(minimum)
    max_scale, max_min = F(0), F(0)
    for j in range(8):
        max_scale = scales[j] if scales[j] > max_scale else max_scale
        max_min = mins[j] if mins[j] > max_min else max_min
    inv_scale = F(63) / max_scale if max_scale > 0 else F(0)
    inv_min = F(63) / max_min if max_min > 0 else F(0)
    packed = [0] * 12
    ls_all, lm_all = [], []
    for j in range(8):
        ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        ls_all.append(ls)
        lm_all.append(lm)
        if j < 4:
            packed[j], packed[j + 4] = ls, lm
        else:
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            packed[j - 4] |= (ls >> 4) << 6
            packed[j] |= (lm >> 4) << 6
    d_bytes, d = f16_round_trip(max_scale / F(63))
    dmin_bytes, dmin = f16_round_trip(max_min / F(63))
    for j in range(8):
        sub_d = d * F(ls_all[j])
        if sub_d == 0:
            continue
        sub_m = dmin * F(lm_all[j])
        for i in range(32):
            levels[32 * j + i] = max(0, min(nmax, nearest_int((x[32 * j + i] + sub_m) / sub_d)))
    return d_bytes + dmin_bytes + bytes(packed), levels


def quantize_q4_k_block(x) -> bytes:
    head, levels = _affine_block([F(v) for v in x], 15, -1.0, 0.1, 20)
    qs = [levels[c + i] | (levels[c + i + 32] << 4) for c in range(0, 256, 64) for i in range(32)]
    return head + bytes(qs)


def quantize_q5_k_block(x) -> bytes:
    head, levels = _affine_block([F(v) for v in x], 31, -0.5, 0.1, 15)
    qh, qs = [0] * 32, []
    for chunk, c in enumerate(range(0, 256, 64)):
        for i in range(32):
            low, high = levels[c + i], levels[c + i + 32]
            if low > 15:
                low -= 16
                qh[i] |= 1 << (2 * chunk)
            if high > 15:
                high -= 16
                qh[i] |= 2 << (2 * chunk)
            qs.append(low | (high << 4))
    return head + bytes(qh) + bytes(qs)


def quantize_q6_k_block(x) -> bytes:
    x = [F(v) for v in x]
    levels, scales = [], []
    for j in range(16):
        level, scale = make_qx_quants(x[16 * j:16 * j + 16], 32)
        levels += level
        scales.append(scale)
    max_scale = max_abs = F(0)
    for scale in scales:
        if abs(scale) > max_abs:
            max_abs, max_scale = abs(scale), scale
    if max_abs < F(1e-15):
        return bytes(210)
    iscale = F(-128) / max_scale
    d_bytes, d = f16_round_trip(F(1) / iscale)
    sub_scales = [min(127, nearest_int(iscale * scale)) for scale in scales]
    for j in range(16):
        sub_d = d * F(sub_scales[j])
        if sub_d == 0:
            continue
        for i in range(16):
            levels[16 * j + i] = max(-32, min(31, nearest_int(x[16 * j + i] / sub_d))) + 32
    ql, qh = [0] * 128, [0] * 64
    for half, c in enumerate(range(0, 256, 128)):
        for i in range(32):
            q1, q2, q3, q4 = (levels[c + i + 32 * k] for k in range(4))
            ql[64 * half + i] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            ql[64 * half + i + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            qh[32 * half + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    return bytes(ql) + bytes(qh) + np.array(sub_scales, dtype=np.int8).tobytes() + d_bytes
