"""Measurements: perplexity, llama-bench style benchmarks, the kernel benchmark, llama.cpp for comparison."""
