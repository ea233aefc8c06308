"""`hybridinfer serve`: an OpenAI-compatible HTTP server (FastAPI) over the request scheduler."""
