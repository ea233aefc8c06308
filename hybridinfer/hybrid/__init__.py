"""The hybrid CPU+GPU runtime on the packed engine.

    setup.py     which layers, neurons and output go to the GPU side (a split, a --vram-budget, or -ngl N)
    gpu_side.py  the GPU side: weights in the file's own formats on a torch device, and its part of each layer
    cpu_half.py  the CPU half of a split FFN: the cold neurons, on a worker thread, by the packed kernels
    report.py    per-token times of each side and of the transfers

The decoder loop itself stays in `runtime/decoder.py`: a layer placed on the GPU side is handed to `GPUSide`.
"""
