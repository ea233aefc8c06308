"""A SiLU variant of a GGUF model: the same tensors, its FFN activation set to SiLU (`hybridinfer.ffn_activation`).

The 7B-shaped synthetic ProSparse model is ReLU; its SiLU variant is the SwiGLU model of the same shapes and
formats that `make bench` runs dense and with CATS sparsity files (`hybridinfer sparsify`), side by side.

Usage: PYTHONPATH=. python tools/silu_variant.py MODEL.gguf OUT.gguf
"""

from __future__ import annotations

import sys

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from hybridinfer.atomic_file import atomic_output
from hybridinfer.model_file.config import ACTIVATION_KEY, THRESHOLD_KEY


def write_silu_variant(source: str, target: str) -> None:
    reader = gguf.GGUFReader(source)
    name = reader.fields.get("general.name")
    label = (name.contents() if name is not None else "model") + " (SiLU variant)"
    metadata = {ACTIVATION_KEY: MetadataDetails(gguf.GGUFValueType.STRING, "silu"),
                THRESHOLD_KEY: MetadataDetails(gguf.GGUFValueType.FLOAT32, 0.0),
                "general.name": MetadataDetails(gguf.GGUFValueType.STRING, label)}
    arch = reader.fields["general.architecture"].contents()
    with atomic_output(target) as partial:
        writer = gguf.GGUFWriter(partial, arch=arch, endianess=reader.endianess)
        alignment = reader.fields.get("general.alignment")
        if alignment is not None:
            writer.data_alignment = alignment.contents()
        copy_with_new_metadata(reader, writer, metadata, [])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    write_silu_variant(sys.argv[1], sys.argv[2])
