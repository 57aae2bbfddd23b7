"""The inference engine: a loaded Kontext base that runs Cases into images and timings."""
from .engine import Engine, RunResult

__all__ = ["Engine", "RunResult"]
