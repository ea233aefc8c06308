"""The hybrid CPU+GPU runtime on the packed engine.

    setup.py       the placement the options ask for (a split, a --vram-budget, or -ngl N; `placement/`)
    gpu_side.py    the GPU side: its layers' weights in the file's own formats on a torch device, the clock
    gpu_parts.py   its parts: attention, the dense FFN of -ngl, the boundary, the output; CPU parts timed
    split_ffn.py   the split FFN: hot neurons on the GPU, cold neurons on the CPU meanwhile, the only overlap
    decode_graphs.py  one decoded token as the parts' device and host steps: the device steps captured as CUDA
                   graphs after a first token, then replayed
    report.py      per-token times of each side and of the transfers

`runtime/build.py` assembles the decoder from these parts and the CPU's.
"""
