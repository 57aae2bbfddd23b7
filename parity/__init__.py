"""kontext-parity: measure how far a FLUX.1-Kontext inference setup drifts from AI Toolkit previews."""
from .case import Case, LoraSpec
from .errors import ParityError

__version__ = "0.1.0"


def __getattr__(name):  # the engine pulls in torch and diffusers: import it only when asked
    if name in ("Engine", "RunResult"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)


__all__ = ["Case", "LoraSpec", "ParityError", "Engine", "RunResult"]
