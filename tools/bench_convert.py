"""Conversion benchmark: synthesize a full-size ProSparse-LLaMA-2-7B checkpoint (fp32 safetensors, ~27 GB,
6 shards, as published) and convert it to GGUF, reporting throughput (MB/s of input) and peak RSS.

Usage: PYTHONPATH=. python tools/bench_convert.py [--workdir DIR] [--outtype q4_0] [--variant prosparse-llama-2-7b] [--keep]
The conversion runs in a child process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tools.synth_checkpoint import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="models/bench-convert")
    parser.add_argument("--variant", default="prosparse-llama-2-7b")
    parser.add_argument("--outtype", default="q4_0")
    parser.add_argument("--keep", action="store_true", help="keep the synthesized checkpoint and the output")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    hf_dir = workdir / args.variant
    if not (hf_dir / "config.json").exists():
        synthesize(hf_dir, args.variant, size="full", seed=0)
    output = workdir / f"{args.variant}.{args.outtype}.gguf"
    done = subprocess.run([sys.executable, "-m", "hybridinfer", "convert", str(hf_dir), "-o", str(output),
                           "--outtype", args.outtype, "--force", "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr.strip())
    summary = json.loads(done.stdout)
    largest = max(p.stat().st_size for p in hf_dir.glob("*.safetensors"))
    print("| checkpoint | outtype | input GB | output GB | seconds | MB/s of input | peak RSS MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.variant} (fp32 safetensors, largest shard {largest / 1e9:.2f} GB) | {args.outtype} | "
          f"{summary['input_bytes'] / 1e9:.2f} | {summary['output_bytes'] / 1e9:.2f} | {summary['seconds']:.0f} | "
          f"{summary['input_mb_per_s']:.0f} | {summary['peak_rss_mb']:.0f} |")
    if not args.keep:
        shutil.rmtree(hf_dir)
        output.unlink()


if __name__ == "__main__":
    main()
