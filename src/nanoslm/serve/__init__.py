"""`nanoslm serve`: a local playground page and an OpenAI-compatible completions API over trained checkpoints.

    nanoslm serve --checkpoint models/best.pt --repo .     # then open http://127.0.0.1:8000/

See generation.py for how concurrent requests share the models, registry.py for the models it keeps loaded,
experiments.py for DVC experiments.
"""

from .app import create_app
from .registry import Registry
from .server import running, serve_forever

__all__ = ["create_app", "Registry", "running", "serve_forever"]
