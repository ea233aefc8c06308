"""hybridinfer: activation-sparse LLM inference, hot neurons on the GPU and cold neurons on the CPU."""

from .engine import Engine, load
from .errors import HybridInferError
from .generation.generate import GenerationChunk, GenerationResult, Timings

__version__ = "0.1.0"
__all__ = ["Engine", "GenerationChunk", "GenerationResult", "HybridInferError", "Timings", "load"]
