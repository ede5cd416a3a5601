"""Nano-SLM: a small GPT trained on TinyStories, as a reproducible DVC pipeline."""

__version__ = "0.1.0"
