"""The decoder that runs: numba kernels over weights packed from the file, its sparse FFN, memory checks."""
