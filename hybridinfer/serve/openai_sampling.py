"""What a request that leaves a sampling field out gets (OpenAI's meaning: temperature 1 over the whole
distribution; top-k and min-p, which OpenAI lacks, off); `hybridinfer serve --temp ...` replaces these. A module of
its own, free of pydantic and FastAPI, so that building the command line imports neither."""

from __future__ import annotations

from ..generation.sampling import SamplerSettings

OPENAI_SAMPLING = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
