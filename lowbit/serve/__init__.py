"""Serving: an embedded generation engine behind an OpenAI-compatible HTTP API, and the vLLM
launcher. ``engine`` (batching, sampling) needs only torch; ``app`` needs the serve extra
(fastapi, uvicorn)."""
