"""The index of a sharded checkpoint (model.safetensors.index.json, pytorch_model.bin.index.json): the shard
files its weight_map names, checked before any shard is read or any output is written."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import HybridInferError
from .json_file import read_json_object, shown


def shard_files(index: Path, suffix: str) -> list[Path]:
    """The distinct shard files (each a `suffix` file beside the index), in name order."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        found = "has no weight_map" if weight_map is None else f"has weight_map {shown(weight_map)}"
        raise HybridInferError(f"{index} {found}, not an object of tensor name -> shard file; download it again")
    for tensor, shard in weight_map.items():
        if not _is_shard_name(shard, suffix):
            raise HybridInferError(f"{index}: weight_map[{tensor!r}] must name a {suffix} file in the checkpoint "
                                   f"directory, got {shown(shard)}; download the index again")
    shards = sorted(set(weight_map.values()))
    missing = [shard for shard in shards if not (index.parent / shard).is_file()]
    if missing:
        raise HybridInferError(f"{index} names {missing[0]}, which is missing; the download is incomplete")
    return [index.parent / shard for shard in shards]


def _is_shard_name(shard, suffix: str) -> bool:
    if not isinstance(shard, str) or not shard.endswith(suffix):
        return False
    path = PurePosixPath(shard)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in shard
