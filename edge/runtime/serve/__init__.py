"""``serve``: bundles behind an HTTP API that existing clients speak.

- generators (chat, image-to-text): OpenAI-compatible ``GET /v1/models`` and
  ``POST /v1/chat/completions`` (streamed as server-sent events or not);
- classifiers (text, image): the Open Inference Protocol v2 (``/v2/health/*``,
  ``/v2/models/{name}``, ``/v2/models/{name}/infer`` with BYTES inputs);
- ``/metrics`` (Prometheus) and ``/profile`` (the live data profile and its drift against the
  bundle's training profile).

One worker thread runs every model (:mod:`.engine`); FastAPI and uvicorn (the ``serve`` extra)
carry the HTTP. Nothing here imports torch or transformers.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
