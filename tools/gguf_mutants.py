"""Mutated copies of a GGUF file, for fuzzing the loader: truncations, byte flips, absurd or wrongly typed
metadata, huge array and string lengths, broken tensor directories, NaN weights, hostile chat templates.

`Layout.of(path)` maps where each metadata entry and tensor record sits in the header (read with the `gguf`
package's own reader, on the pristine file). `mutate(layout, rng)` returns a `Mutant`: a new header, what
follows it (the original data section, possibly cut or patched) and a one-word kind for the outcome table.
Every mutant is a pure function of the layout and the random generator, so a seed reproduces a run.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np
from gguf import GGUFReader, GGUFValueType

T = GGUFValueType
INT_RANGES = {T.UINT8: (0, 2**8 - 1), T.INT8: (-2**7, 2**7 - 1), T.UINT16: (0, 2**16 - 1),
              T.INT16: (-2**15, 2**15 - 1), T.UINT32: (0, 2**32 - 1), T.INT32: (-2**31, 2**31 - 1),
              T.UINT64: (0, 2**64 - 1), T.INT64: (-2**63, 2**63 - 1)}
FORMATS = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
           T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d"}
ABSURD_INTS = (0, 1, -1, 2, 3, 7, 63, 128, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1)
ABSURD_FLOATS = (float("nan"), float("inf"), float("-inf"), 0.0, -1.0, 1e30, 1e-30, 3.0e38)
HUGE_LENGTHS = (2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1)
HOSTILE_TEMPLATES = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'a' * 1000000000 }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ 'x'|center(1000000000) }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ 10 ** 10 ** 10 }}",
    "{% for m in messages %}{{ m.content }}{% endfor %",  # a syntax error
    "{{ raise_exception('no') }}",
)
# metadata keys whose values the architecture depends on, with values worth trying (beside ABSURD_INTS)
SEMANTIC = {
    "attention.head_count": (0, 7, 5), "attention.head_count_kv": (0, 2, 4, 7), "rope.dimension_count": (128, 0, 1, 63),
    "block_count": (0, 1, 31, 100), "context_length": (0, 1, 2**31 - 1), "embedding_length": (0, 64, 577, 1152),
    "feed_forward_length": (0, 1, 32, 1537, 3072), "vocab_size": (0, 1, 49151, 49153),
}


def _pack_value(kind: GGUFValueType, value) -> bytes:
    if kind == T.STRING:
        data = value if isinstance(value, bytes) else value.encode("utf-8")
        return struct.pack("<Q", len(data)) + data
    fmt = FORMATS[kind]
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        value = min(max(int(value), low), high)
    return struct.pack(fmt, value)


def pack_entry(key: str, kind: GGUFValueType, value, item: GGUFValueType | None = None) -> bytes:
    """One metadata entry's bytes: key, type, value (an array: item type, count, items)."""
    head = _pack_value(T.STRING, key) + struct.pack("<I", kind)
    if kind != T.ARRAY:
        return head + _pack_value(kind, value)
    return head + struct.pack("<IQ", item, len(value)) + b"".join(_pack_value(item, v) for v in value)


@dataclass
class Entry:
    """One metadata entry or tensor record: its bytes, and where (within them) the parts worth patching are."""
    name: str
    data: bytes
    kind: GGUFValueType | None = None  # metadata only
    item: GGUFValueType | None = None  # arrays only
    patch_points: dict[str, tuple[int, str]] = field(default_factory=dict)  # part -> (offset, struct format)


@dataclass
class Layout:
    prefix: bytes  # magic, version (the counts follow and are rewritten)
    metadata: list[Entry]
    tensors: list[Entry]
    data_offset: int
    path: str
    size: int

    @classmethod
    def of(cls, path: str) -> "Layout":
        reader = GGUFReader(path)
        raw = bytes(np.asarray(reader.data[:reader.data_offset]))
        base = reader.data.ctypes.data

        def at(part) -> int:
            return part.ctypes.data - base

        def entry(field_, name, kind=None, item=None, points=()):
            start = field_.offset
            end = max(at(p) + p.nbytes for p in field_.parts)
            return Entry(name, raw[start:end], kind, item,
                         {label: (at(field_.parts[i]) - start, fmt) for label, i, fmt in points})

        metadata = []
        for key, f in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            kind = f.types[0]
            points = [("key_length", 0, "<Q")]
            if kind == T.STRING:
                points.append(("string_length", 3, "<Q"))
            elif kind == T.ARRAY:
                points += [("item_type", 3, "<I"), ("array_length", 4, "<Q")]
            elif kind in FORMATS:
                points.append(("value", 3, FORMATS[kind]))
            metadata.append(entry(f, key, kind, f.types[1] if kind == T.ARRAY else None, points))
        tensors = [entry(t.field, t.name, points=[("name_length", 0, "<Q"), ("n_dims", 2, "<I"), ("dim0", 3, "<Q"),
                                                  ("type", 4, "<I"), ("offset", 5, "<Q")])
                   for t in reader.tensors]
        return cls(raw[:8], metadata, tensors, reader.data_offset, path, os.path.getsize(path))

    def find(self, key_suffix: str) -> int | None:
        return next((i for i, e in enumerate(self.metadata) if e.name.endswith(key_suffix)), None)


@dataclass
class Mutant:
    kind: str
    header: bytes
    layout: Layout
    cut: int | None = None  # truncate the whole file to this many bytes
    data_patches: list[tuple[int, bytes]] = field(default_factory=list)  # (offset in the data section, bytes)

    def write(self, path: str) -> None:
        """The mutant file: its header, padding to 32, then the original data section with the patches."""
        pad = -len(self.header) % 32
        with open(self.layout.path, "rb") as source, open(path, "wb") as out:
            out.write(self.header + b"\0" * pad)
            out.flush()
            data_len = self.layout.size - self.layout.data_offset
            if self.cut is not None:
                data_len = max(0, min(data_len, self.cut - len(self.header) - pad))
            copied, offset = 0, self.layout.data_offset
            while copied < data_len:
                n = os.sendfile(out.fileno(), source.fileno(), offset + copied, data_len - copied)
                if n == 0:
                    break
                copied += n
            for where, data in self.data_patches:
                if where < data_len:
                    out.seek(len(self.header) + pad + where)
                    out.write(data[:data_len - where])
            if self.cut is not None and self.cut < len(self.header) + pad:
                out.truncate(self.cut)


def assemble(layout: Layout, metadata: list[bytes], tensors: list[bytes], counts: tuple[int, int] | None = None) -> bytes:
    n_tensors, n_keys = counts if counts is not None else (len(tensors), len(metadata))
    return layout.prefix + struct.pack("<QQ", n_tensors, n_keys) + b"".join(metadata) + b"".join(tensors)


def _patched(entry: Entry, point: str, value) -> bytes | None:
    if point not in entry.patch_points:
        return None
    offset, fmt = entry.patch_points[point]
    data = bytearray(entry.data)
    if fmt in ("<f", "<d"):
        data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    else:
        bits = 8 * struct.calcsize(fmt)
        data[offset:offset + bits // 8] = (int(value) % 2**bits).to_bytes(bits // 8, "little")
    return bytes(data)


def mutate(layout: Layout, rng: np.random.Generator) -> Mutant:
    kinds = list(MUTATIONS)
    weights = np.array([MUTATIONS[k][1] for k in kinds], float)
    kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
    return MUTATIONS[kind][0](layout, rng)


def _base(layout: Layout) -> tuple[list[bytes], list[bytes]]:
    return [e.data for e in layout.metadata], [e.data for e in layout.tensors]


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _truncate(layout, rng):
    header = assemble(layout, *_base(layout))
    limit = layout.data_offset + 64 if rng.random() < 0.6 else layout.size
    return Mutant("truncate", header, layout, cut=int(rng.integers(0, limit)))


def _flip_header(layout, rng):
    header = bytearray(assemble(layout, *_base(layout)))
    for _ in range(int(rng.integers(1, 5))):
        where = int(rng.integers(8, len(header)))
        header[where] = int(rng.integers(256)) if rng.random() < 0.5 else header[where] ^ (1 << int(rng.integers(8)))
    return Mutant("flip-header", bytes(header), layout)


def _entry_patch(layout, rng, point: str, values, kind: str, entries=None):
    metadata, tensors = _base(layout)
    pool = entries if entries is not None else ("metadata" if point not in ("n_dims", "dim0", "type", "offset",
                                                                           "name_length") else "tensors")
    table = layout.metadata if pool == "metadata" else layout.tensors
    candidates = [i for i, e in enumerate(table) if point in e.patch_points]
    if not candidates:
        return _flip_header(layout, rng)
    index = _pick(rng, candidates)
    patched = _patched(table[index], point, _pick(rng, values))
    (metadata if pool == "metadata" else tensors)[index] = patched
    return Mutant(kind, assemble(layout, metadata, tensors), layout)


def _absurd_value(layout, rng):
    metadata, tensors = _base(layout)
    candidates = [i for i, e in enumerate(layout.metadata) if e.kind in FORMATS]
    index = _pick(rng, candidates)
    entry = layout.metadata[index]
    values = ABSURD_FLOATS if entry.kind in (T.FLOAT32, T.FLOAT64) else ABSURD_INTS
    metadata[index] = _patched(entry, "value", _pick(rng, values))
    return Mutant("absurd-value", assemble(layout, metadata, tensors), layout)


def _retype(layout, rng):
    metadata, tensors = _base(layout)
    index = int(rng.integers(len(layout.metadata)))
    key = layout.metadata[index].name
    choice = int(rng.integers(8))
    replacement = [
        lambda: pack_entry(key, T.INT32, _pick(rng, (0, -1, 42))),
        lambda: pack_entry(key, T.FLOAT32, float("nan")),
        lambda: pack_entry(key, T.STRING, "x"),
        lambda: pack_entry(key, T.ARRAY, [1, 2, 3], T.INT32),
        lambda: pack_entry(key, T.ARRAY, ["a", "b"], T.STRING),
        lambda: pack_entry(key, T.ARRAY, [], T.UINT8),
        lambda: pack_entry(key, T.BOOL, True),
        lambda: pack_entry(key, T.UINT64, 2**63),
    ][choice]()
    metadata[index] = replacement
    return Mutant("retype", assemble(layout, metadata, tensors), layout)


def _semantic(layout, rng):
    metadata, tensors = _base(layout)
    name = _pick(rng, list(SEMANTIC) + ["layer_norm_rms_epsilon", "freq_base", "token_id", "chat_template",
                                        "tokenizer.ggml.model", "general.architecture", "general.alignment",
                                        "ffn_activation", "ffn_activation_threshold"])
    index = layout.find(name)
    if index is None:
        return _retype(layout, rng)
    entry = layout.metadata[index]
    if name == "chat_template":
        value = _pick(rng, HOSTILE_TEMPLATES)
        metadata[index] = pack_entry(entry.name, T.STRING, value) if rng.random() < 0.8 else \
            pack_entry(entry.name, T.ARRAY, [value], T.STRING)
    elif entry.kind == T.STRING:
        metadata[index] = pack_entry(entry.name, T.STRING, _pick(rng, ("", "gptneox", "bert", "gelu", "\u00ff" * 3)))
    elif entry.kind in (T.FLOAT32, T.FLOAT64):
        metadata[index] = _patched(entry, "value", _pick(rng, ABSURD_FLOATS))
    elif entry.kind in FORMATS:
        values = SEMANTIC.get(name, ()) + ABSURD_INTS
        metadata[index] = _patched(entry, "value", _pick(rng, values))
        if rng.random() < 0.2:  # an array where a number belongs
            metadata[index] = pack_entry(entry.name, T.ARRAY, [1, 2], T.INT32)
    return Mutant("semantic", assemble(layout, metadata, tensors), layout)


def _array_items(layout, rng):
    """Change one item of a tokenizer array: a token id type, a token's text, a merge."""
    metadata, tensors = _base(layout)
    candidates = [i for i, e in enumerate(layout.metadata) if e.kind == T.ARRAY and e.name.startswith("tokenizer")]
    if not candidates:
        return _retype(layout, rng)
    index = _pick(rng, candidates)
    entry = layout.metadata[index]
    values = _read_array(entry)
    if not values:
        return _retype(layout, rng)
    where = int(rng.integers(len(values)))
    if entry.item == T.STRING:
        values[where] = _pick(rng, (b"", b"\xff\xfe", b"a" * 5000, b"no-space-merge", values[0], b" "))
    else:
        values[where] = _pick(rng, ABSURD_INTS if entry.item in INT_RANGES else ABSURD_FLOATS)
    if rng.random() < 0.3:
        values = values[: int(rng.integers(len(values)))]  # a shorter array
    metadata[index] = pack_entry(entry.name, T.ARRAY, values, entry.item)
    return Mutant("array-items", assemble(layout, metadata, tensors), layout)


def _read_array(entry: Entry) -> list:
    offset, _ = entry.patch_points["array_length"]
    count = struct.unpack_from("<Q", entry.data, offset)[0]
    pos, values = offset + 8, []
    for _ in range(count):
        if entry.item == T.STRING:
            n = struct.unpack_from("<Q", entry.data, pos)[0]
            values.append(entry.data[pos + 8:pos + 8 + n])
            pos += 8 + n
        else:
            fmt = FORMATS[entry.item]
            values.append(struct.unpack_from(fmt, entry.data, pos)[0])
            pos += struct.calcsize(fmt)
    return values


def _bad_utf8(layout, rng):
    metadata, tensors = _base(layout)
    table = _pick(rng, ("metadata", "tensors"))
    entries = layout.metadata if table == "metadata" else layout.tensors
    index = int(rng.integers(len(entries)))
    data = bytearray(entries[index].data)
    key_length = struct.unpack_from("<Q", data, 0)[0]
    where = 8 + int(rng.integers(max(1, key_length)))
    data[where] = _pick(rng, (0xFF, 0xC3, 0x80))
    (metadata if table == "metadata" else tensors)[index] = bytes(data)
    return Mutant("bad-utf8", assemble(layout, metadata, tensors), layout)


def _counts(layout, rng):
    metadata, tensors = _base(layout)
    n_tensors, n_keys = len(tensors), len(metadata)
    if rng.random() < 0.5:
        n_tensors = _pick(rng, (0, n_tensors - 1, n_tensors + 1) + HUGE_LENGTHS)
    else:
        n_keys = _pick(rng, (0, n_keys - 1, n_keys + 1) + HUGE_LENGTHS)
    return Mutant("counts", assemble(layout, metadata, tensors, (n_tensors, n_keys)), layout)


def _shuffle_records(layout, rng):
    """Drop, duplicate or swap metadata entries or tensor records."""
    metadata, tensors = _base(layout)
    table = metadata if rng.random() < 0.5 else tensors
    i, j = int(rng.integers(len(table))), int(rng.integers(len(table)))
    action = int(rng.integers(3))
    if action == 0:
        del table[i]
    elif action == 1:
        table.insert(j, table[i])
    else:
        table[i], table[j] = table[j], table[i]
        if table is tensors:  # swap the names, keep the geometry: a tensor of one shape under another's name
            a, b = layout.tensors[i], layout.tensors[j]
            tensors[i], tensors[j] = _rename(a, b.name), _rename(b, a.name)
    return Mutant("records", assemble(layout, metadata, tensors), layout)


def _rename(entry: Entry, name: str) -> bytes:
    old_length = struct.unpack_from("<Q", entry.data, 0)[0]
    return _pack_value(T.STRING, name) + entry.data[8 + old_length:]


def _nan_weights(layout, rng):
    """NaN or inf bytes in the data section (F32 norms: 0xFFFFFFFF is NaN; f16 scales: 0x7C00 is inf)."""
    header = assemble(layout, *_base(layout))
    data_size = layout.size - layout.data_offset
    patches = [(int(rng.integers(data_size - 4)), _pick(rng, (b"\xff\xff\xff\xff", b"\x00\x7c", b"\x00\x00\x80\x7f")))
               for _ in range(int(rng.integers(1, 64)))]
    return Mutant("nan-weights", header, layout, data_patches=patches)


MUTATIONS = {  # kind -> (function, weight)
    "truncate": (_truncate, 2), "flip-header": (_flip_header, 3), "absurd-value": (_absurd_value, 2),
    "retype": (_retype, 2), "semantic": (_semantic, 4), "array-items": (_array_items, 1),
    "array-length": (lambda l, r: _entry_patch(l, r, "array_length", HUGE_LENGTHS + (0, 1), "array-length"), 2),
    "string-length": (lambda l, r: _entry_patch(l, r, "string_length", HUGE_LENGTHS + (0, 1, 2**20), "string-length"), 1),
    "key-length": (lambda l, r: _entry_patch(l, r, "key_length", HUGE_LENGTHS + (0, 1), "key-length", "metadata"), 1),
    "tensor-dims": (lambda l, r: _entry_patch(l, r, "dim0", (0, 1, 32, 33, 2**32, 2**63) + HUGE_LENGTHS, "tensor-dims"), 2),
    "tensor-ndims": (lambda l, r: _entry_patch(l, r, "n_dims", (0, 1, 3, 5, 2**31), "tensor-ndims"), 1),
    "tensor-type": (lambda l, r: _entry_patch(l, r, "type", (0, 1, 2, 3, 4, 8, 12, 30, 39, 2**31), "tensor-type"), 2),
    "tensor-offset": (lambda l, r: _entry_patch(l, r, "offset", (0, 1, 32, 2**20, 2**40, 2**63), "tensor-offset"), 2),
    "bad-utf8": (_bad_utf8, 1), "counts": (_counts, 1), "records": (_shuffle_records, 2),
    "nan-weights": (_nan_weights, 2),
}


def with_entry(layout: Layout, key: str, kind: GGUFValueType, value, item: GGUFValueType | None = None) -> Mutant:
    """The file with metadata `key` set to `value` (added when absent), every other byte as it was."""
    metadata, tensors = _base(layout)
    entry = pack_entry(key, kind, value, item)
    index = next((i for i, e in enumerate(layout.metadata) if e.name == key), None)
    if index is None:
        metadata.append(entry)
    else:
        metadata[index] = entry
    return Mutant("edit", assemble(layout, metadata, tensors), layout)


def with_array_length(layout: Layout, key: str, length: int) -> Mutant:
    """The file with array `key` claiming `length` items (its items unchanged)."""
    metadata, tensors = _base(layout)
    index = next(i for i, e in enumerate(layout.metadata) if e.name == key)
    metadata[index] = _patched(layout.metadata[index], "array_length", length)
    return Mutant("edit", assemble(layout, metadata, tensors), layout)


def with_key_bytes(layout: Layout, key: str, raw_value: bytes) -> Mutant:
    """The file with string metadata `key` holding `raw_value` as its bytes (e.g. invalid UTF-8)."""
    metadata, tensors = _base(layout)
    index = next(i for i, e in enumerate(layout.metadata) if e.name == key)
    metadata[index] = _pack_value(T.STRING, key) + struct.pack("<I", T.STRING) + _pack_value(T.STRING, raw_value)
    return Mutant("edit", assemble(layout, metadata, tensors), layout)


def with_tensor_values(layout: Layout, name: str, value: bytes, at: int = 0) -> Mutant:
    """The file with bytes `value` written `at` bytes into tensor `name`'s data (e.g. a NaN)."""
    entry = next(e for e in layout.tensors if e.name == name)
    offset = struct.unpack_from("<Q", entry.data, entry.patch_points["offset"][0])[0]
    return Mutant("edit", assemble(layout, *_base(layout)), layout, data_patches=[(offset + at, value)])
