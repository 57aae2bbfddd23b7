"""Weight quantization as AI Toolkit does it for FLUX.1-Kontext with ``quantize: true``.

What AI Toolkit does (ostris/ai-toolkit 27a03a9):

- ``extensions_built_in/diffusion_models/flux_kontext/flux_kontext.py`` (load_model): the transformer,
  already cast to the train dtype, goes through ``toolkit.util.quantize.quantize(transformer,
  weights=get_qtype(qtype), **quantize_kwargs)`` then ``optimum.quanto.freeze``; T5 (text_encoder_2) the
  same when ``quantize_te`` (defaults to ``quantize``). CLIP and the VAE are never quantized.
- ``toolkit/config_modules.py``: ``qtype`` and ``qtype_te`` default to ``"qfloat8"`` (quanto's
  float8 e4m3fn); ``quantize_kwargs`` defaults to ``{}``: nothing is excluded for Kontext.
- ``toolkit/util/quantize.py`` (quantize): walks ``named_modules()``, leaves modules that are already
  quantized alone and hands every other one to quanto's ``_quantize_submodule`` with no activation
  qtype. quanto then swaps every ``nn.Linear`` (and ``nn.Conv2d``) for its Q-module; LayerNorms are
  left alone when activations are not quantized. Per-output-row absmax scale = max|w| / 448.

The one deliberate difference: quanto's absmax scale of a weight row that is all zero is 0, and
0/0 makes the whole row NaN (and the image with it). Such rows get scale 1 here, so they quantize
to exact zeros; every other row is bit-identical to quanto's own result. The number of guarded
rows is reported, so a run where it matters is visible.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ParityError

QTYPES = ("qfloat8",)
# components AI Toolkit quantizes for flux_kontext (transformer; T5 through quantize_te)
COMPONENTS = ("transformer", "text_encoder_2")


@dataclass
class QuantizeReport:
    qtype: str
    modules: dict[str, int] = field(default_factory=dict)  # component -> Q-modules created
    zero_rows_guarded: dict[str, int] = field(default_factory=dict)  # "component.module" -> rows


def _guarded_optimizer(report: QuantizeReport):
    from optimum.quanto.tensor.optimizers import AbsmaxOptimizer

    class ZeroSafeAbsmax(AbsmaxOptimizer):
        """quanto's absmax, except that an all-zero row gets scale 1 instead of 0 (0/0 = NaN)."""

        current = ""

        def optimize(self, base, qmax, axis=None):
            scale = super().optimize(base, qmax, axis)
            zero = scale == 0
            if bool(zero.any()):
                report.zero_rows_guarded[self.current] = int(zero.sum())
                scale = torch.where(zero, torch.ones_like(scale), scale)
            return scale

    return ZeroSafeAbsmax()


def quantize_module_tree(model: torch.nn.Module, qtype: str = "qfloat8", *, name: str = "model",
                         report: QuantizeReport | None = None) -> QuantizeReport:
    """Quantize every quanto-supported submodule of ``model`` in place, then freeze (AI Toolkit's order)."""
    from optimum.quanto import freeze, qtypes
    from optimum.quanto.nn import QModuleMixin, quantize_module

    if qtype not in QTYPES:
        raise ParityError(f'quantization "{qtype}" is not supported; choose one of: {", ".join(QTYPES)}')
    report = report or QuantizeReport(qtype)
    optimizer = _guarded_optimizer(report)
    weights = qtypes[qtype]
    created = 0
    for module_name, module in list(model.named_modules()):
        if not module_name or isinstance(module, QModuleMixin):
            continue
        qmodule = quantize_module(module, weights=weights, activations=None, optimizer=optimizer)
        if qmodule is None:
            continue
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, qmodule)
        qmodule.name = module_name
        created += 1
    # freeze: the float weights become QBytesTensors; the scale is computed here, one module at a time
    for module_name, module in model.named_modules():
        if isinstance(module, QModuleMixin):
            optimizer.current = f"{name}.{module_name}"
            module.freeze()
    freeze(model)  # a no-op for frozen modules; kept so every Q-module is frozen as in AI Toolkit
    for module_name, module in model.named_modules():
        if isinstance(module, QModuleMixin) and module.weight_qtype is not None:
            data = module.weight._data if hasattr(module.weight, "_data") else None
            scale = getattr(module.weight, "_scale", None)
            if scale is not None and not bool(torch.isfinite(scale).all()):
                raise ParityError(f"quantizing {name}.{module_name} produced a non-finite scale")
            if data is not None and data.dtype.is_floating_point and bool(torch.isnan(data.float()).any()):
                raise ParityError(f"quantizing {name}.{module_name} produced NaN weights")
    for param in model.parameters():
        param.requires_grad_(False)
    report.modules[name] = report.modules.get(name, 0) + created
    return report


def quantize_pipeline(pipe, qtype: str = "qfloat8", *, components=COMPONENTS) -> QuantizeReport:
    """AI Toolkit's ``quantize: true`` (with ``quantize_te`` left at its default): transformer and T5."""
    if qtype not in QTYPES:
        raise ParityError(f'quantization "{qtype}" is not supported; choose one of: {", ".join(QTYPES)}')
    report = QuantizeReport(qtype)
    for component in components:
        model = getattr(pipe, component, None)
        if model is None:
            raise ParityError(f"the pipeline has no {component} to quantize")
        quantize_module_tree(model, qtype, name=component, report=report)
    pipe._parity_quantize_report = report
    return report


def is_quantized(module: torch.nn.Module) -> bool:
    """True for a quanto Q-module whose weight is quantized."""
    try:
        from optimum.quanto.nn import QModuleMixin
    except ImportError:  # quanto not installed: nothing can be quantized
        return False
    return isinstance(module, QModuleMixin) and module.weight_qtype is not None
