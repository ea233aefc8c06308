"""Our K-quant mixes against llama.cpp's on a real model: decode a GGUF file to F32 (gguf-py), then quantize that
F32 file with hybridinfer's table and encoders and with llama.cpp's `llama_model_quantize` (llama-cpp-python), and
compare every tensor's type and bytes. Prints one JSON line: tensors, identical tensors, differing blocks, seconds.

Usage: PYTHONPATH=. python tools/kquant_vs_llamacpp.py [-m MODEL.gguf] [--outtype q4_k_m] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gguf
import numpy as np
from gguf import GGUFReader, GGUFValueType, quants

from hybridinfer.convert.outtypes import OUTTYPES, ModelTraits, stored_type
from hybridinfer.convert.quantize import encode
from hybridinfer.default_model import default_model_path
from hybridinfer.eval.llamacpp_reference import quantize
from hybridinfer.model_file.tensor_shapes import OUTPUT

SKIPPED_KEYS = ("GGUF.", "general.file_type")


def decoded_tensors(reader: GGUFReader):
    """(name, float32 values in the torch shape (out, in)) of every tensor."""
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        yield tensor.name, quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)


def copy_metadata(reader: GGUFReader, writer: gguf.GGUFWriter, file_type: int) -> None:
    for field in reader.fields.values():
        if field.name.startswith(SKIPPED_KEYS) or field.name == "general.architecture":
            continue
        vtype = GGUFValueType(field.types[0])
        sub_type = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    writer.add_file_type(file_type)


def write_file(path: Path, reader: GGUFReader, file_type: int, encoded) -> None:
    writer = gguf.GGUFWriter(path, reader.fields["general.architecture"].contents())
    copy_metadata(reader, writer, file_type)
    for name, values, qtype in encoded:
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, values, raw_shape=values.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default=str(default_model_path()))
    parser.add_argument("--outtype", default="q4_k_m", choices=[k for k in OUTTYPES if OUTTYPES[k].llama_mix])
    parser.add_argument("--workdir", default="/tmp/kquant-vs-llamacpp")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source = GGUFReader(args.model)
    f32_path, ours_path, theirs_path = workdir / "f32.gguf", workdir / "ours.gguf", workdir / "theirs.gguf"
    write_file(f32_path, source, gguf.LlamaFileType.ALL_F32,
               ((name, values, gguf.GGMLQuantizationType.F32) for name, values in decoded_tensors(source)))

    f32 = GGUFReader(f32_path)
    arch = f32.fields["general.architecture"].contents()
    names = {t.name for t in f32.tensors}
    traits = ModelTraits(arch, f32.fields[f"{arch}.block_count"].contents(),
                         f32.fields[f"{arch}.attention.head_count"].contents(),
                         f32.fields[f"{arch}.attention.head_count_kv"].contents(),
                         tied_embeddings=OUTPUT not in names)
    start = time.perf_counter()

    def ours():
        for name, values in decoded_tensors(f32):
            qtype = stored_type(name, values.shape, args.outtype, traits)
            yield name, encode(values, qtype), qtype

    write_file(ours_path, f32, OUTTYPES[args.outtype].file_type, ours())
    our_seconds = time.perf_counter() - start
    start = time.perf_counter()
    quantize(str(f32_path), str(theirs_path), args.outtype, n_threads=1)
    their_seconds = time.perf_counter() - start

    mine, theirs = GGUFReader(ours_path), {t.name: t for t in GGUFReader(theirs_path).tensors}
    report = {"model": args.model, "outtype": args.outtype, "tensors": 0, "identical": 0, "type_mismatches": [],
              "differing_blocks": {}, "types": {}, "ours_seconds": round(our_seconds, 1),
              "llama_cpp_seconds": round(their_seconds, 1)}
    for tensor in mine.tensors:
        other = theirs[tensor.name]
        report["tensors"] += 1
        report["types"][tensor.tensor_type.name] = report["types"].get(tensor.tensor_type.name, 0) + 1
        if tensor.tensor_type != other.tensor_type:
            report["type_mismatches"].append(f"{tensor.name}: {tensor.tensor_type.name} vs {other.tensor_type.name}")
            continue
        a, b = np.asarray(tensor.data), np.asarray(other.data)
        if np.array_equal(a.view(np.uint8), b.view(np.uint8)):
            report["identical"] += 1
        else:
            block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type][1]
            blocks_a, blocks_b = a.view(np.uint8).reshape(-1, block_bytes), b.view(np.uint8).reshape(-1, block_bytes)
            report["differing_blocks"][tensor.name] = int((blocks_a != blocks_b).any(axis=1).sum())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
