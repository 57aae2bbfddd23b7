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
from pathlib import Path

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
    cached: list[str] = field(default_factory=list)  # components requantized from the cache, not quantized


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


def quantize_pipeline(pipe, qtype: str = "qfloat8", *, components=COMPONENTS,
                      cache: Path | None = None, cached: tuple[str, ...] = ()) -> QuantizeReport:
    """AI Toolkit's ``quantize: true`` (with ``quantize_te`` left at its default): transformer and T5.

    ``cache``: a folder for this base and these settings (``cache_folder``) where each quantized component
    is saved (quanto's quantization map + safetensors); ``cached``: components the pipeline was built with
    from that folder (``load_cached``), already quantized.
    """
    if qtype not in QTYPES:
        raise ParityError(f'quantization "{qtype}" is not supported; choose one of: {", ".join(QTYPES)}')
    report = QuantizeReport(qtype, cached=list(cached))
    for component in components:
        model = getattr(pipe, component, None)
        if model is None:
            raise ParityError(f"the pipeline has no {component} to quantize")
        if component in cached:
            continue
        quantize_module_tree(model, qtype, name=component, report=report)
        if cache is not None:
            _save_quantized(model, cache, component)
    pipe._parity_quantize_report = report
    return report


def load_cached(cache: Path, base: str, dtype: torch.dtype, components=COMPONENTS) -> dict[str, torch.nn.Module]:
    """The quantized components the cache holds, built without reading the base's own weights for them: the
    module is made from its config with no weights and the saved quantized ones are put in (requantize).
    On a 12B checkpoint this skips reading 24 GB of bf16 weights and computing every scale."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    builders = {"transformer": lambda: FluxTransformer2DModel.from_config(
                    FluxTransformer2DModel.load_config(base, subfolder="transformer", local_files_only=True)),
                "text_encoder_2": lambda: T5EncoderModel(
                    T5Config.from_pretrained(base, subfolder="text_encoder_2", local_files_only=True))}
    built = {}
    for component in components:
        if not (cache / f"{component}.safetensors").is_file():
            continue
        with init_empty_weights():
            model = builders[component]().to(dtype)
        _load_quantized(model, cache, component)
        built[component] = model.eval()
    return built


def cache_folder(root: Path, base: str, dtype: str, qtype: str) -> Path:
    """Where the quantized weights of ``base`` (a folder or model id) in ``dtype`` are kept: keyed by the base's
    weight files (names, sizes, modification times: hashing 24 GB would cost what the cache saves), the
    settings and the torch and optimum-quanto versions that computed them."""
    import hashlib
    import json
    from importlib.metadata import version

    files = sorted((str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in Path(base).rglob("*.safetensors")) if Path(base).is_dir() else [base]
    blob = json.dumps([str(Path(base).resolve()) if Path(base).is_dir() else base, files, dtype, qtype,
                       torch.__version__, version("optimum-quanto")])
    return Path(root) / f"quantized-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _save_quantized(model: torch.nn.Module, folder: Path, component: str) -> None:
    import json

    from optimum.quanto import quantization_map
    from safetensors.torch import save_file

    from ..files import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    state = {}
    for key, value in model.state_dict().items():  # tied weights (T5's shared embedding) saved as copies
        pointer = value.untyped_storage().data_ptr()
        state[key] = value.contiguous() if pointer not in seen else value.clone().contiguous()
        seen.add(pointer)
    tmp = folder / f".{component}.safetensors.partial"
    save_file(state, str(tmp))
    tmp.replace(folder / f"{component}.safetensors")
    write_atomic(folder / f"{component}.qmap.json", json.dumps(quantization_map(model)))


def _load_quantized(model: torch.nn.Module, folder: Path, component: str) -> None:
    """Requantize an empty ``model`` from a cached component."""
    import json

    from optimum.quanto import requantize
    from safetensors.torch import load_file

    try:
        state = load_file(str(folder / f"{component}.safetensors"))
        requantize(model, state, json.loads((folder / f"{component}.qmap.json").read_text()),
                   device=torch.device("cpu"))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ParityError(f"the cached quantized {component} cannot be loaded ({err}); delete the folder to "
                          "quantize again", source=folder) from None


def is_quantized(module: torch.nn.Module) -> bool:
    """True for a quanto Q-module whose weight is quantized."""
    try:
        from optimum.quanto.nn import QModuleMixin
    except ImportError:  # quanto not installed: nothing can be quantized
        return False
    return isinstance(module, QModuleMixin) and module.weight_qtype is not None


# --- ComfyUI's fp8 weight storage (UNETLoader weight_dtype, fp8_scaled checkpoints) ------------------------
#
# ComfyUI stores a FLUX transformer loaded with weight_dtype fp8_e4m3fn / fp8_e5m2 with every parameter
# (Linear weights and biases, RMSNorm scales) plainly cast to the fp8 type, and computes in the "manual cast"
# dtype: each layer casts its fp8 weight to the input's dtype on the fly (comfy/ops.py:61-95; fp32 on a CPU,
# bf16 on a bf16 GPU, comfy/model_management.py:827-849). Holding the fp8 values in the compute dtype gives
# the same arithmetic (every fp8 value is exact in bf16 and fp32); only the memory is not emulated.

FP8_FORMATS = {torch.float8_e4m3fn: (4, 3, 7), torch.float8_e5m2: (5, 2, 15)}  # exponent bits, mantissa bits, bias


@dataclass
class WeightStorage:
    """How ComfyUI would hold the transformer's weights: what a LoRA patch is rounded back into."""

    dtype: torch.dtype  # the stored type (an fp8 type)
    scales: dict[str, float] = field(default_factory=dict)  # BFL weight key -> per-tensor scale (fp8_scaled)
    layout: dict = field(default_factory=dict)  # BFL weight key -> diffusers pieces (parity.engine.bfl_layout)


def fp8_plain(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A plain cast to fp8 and back (torch's round-to-nearest-even), in the tensor's own dtype."""
    return tensor.to(dtype).to(tensor.dtype)


def stochastic_round_fp8(value: torch.Tensor, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """ComfyUI's stochastic rounding of a float tensor into fp8 (comfy/float.py:13-67), as fp8.

    The value goes through float16; its fp8 mantissa is scaled to an integer grid, a uniform float16
    random number from a CPU generator seeded with ``seed`` is added and the sum floored, so a value
    rounds up with probability equal to its distance from the lower grid point. Rows are processed in
    slices of about 4096*4096 elements, each drawing its random numbers in turn.
    """
    exp_bits, man_bits, bias = FP8_FORMATS[dtype]
    generator = torch.Generator(device=value.device)
    generator.manual_seed(seed)
    out = torch.empty_like(value, dtype=dtype)
    slices = max(1, value.numel() / (4096 * 4096))
    rows = max(1, round(value.shape[0] / slices))
    limit = torch.finfo(dtype).max
    for start in range(0, value.shape[0], rows):
        x = value[start:start + rows].half()
        magnitude = x.abs()
        sign = torch.where(magnitude == 0, torch.zeros_like(x), torch.sign(x))
        exponent = torch.clamp(torch.floor(torch.log2(magnitude)) + bias, 0, 2 ** exp_bits - 1)
        normal = exponent != 0
        scale = torch.exp2(exponent - bias)
        grid = torch.where(normal, (magnitude / scale - 1.0) * 2 ** man_bits,
                           magnitude / 2.0 ** (1 - bias - man_bits))
        grid = grid + torch.rand(grid.shape, dtype=grid.dtype, device=grid.device, generator=generator)
        mantissa = grid.floor() / 2 ** man_bits
        rounded = sign * torch.where(normal, scale * (1.0 + mantissa), 2.0 ** (1 - bias) * mantissa)
        out[start:start + rows] = rounded.clamp(-limit, limit)
    return out


def store_fp8(transformer: torch.nn.Module, dtype: torch.dtype) -> WeightStorage:
    """weight_dtype fp8_e4m3fn / fp8_e5m2: every transformer parameter plainly cast to fp8."""
    from .bfl_layout import bfl_weights

    with torch.no_grad():
        for param in transformer.parameters():
            param.copy_(fp8_plain(param, dtype))
    return WeightStorage(dtype, layout=bfl_weights(transformer))


def store_fp8_scaled(transformer: torch.nn.Module, dtype: torch.dtype = torch.float8_e4m3fn) -> WeightStorage:
    """An fp8_scaled checkpoint as ComfyUI's scaled_fp8 ops use it (comfy/ops.py:379-432): each BFL Linear
    weight in fp8 with one float32 scale (weight = fp8 * scale, the scale rounded to the compute dtype), the
    biases of those Linears in plain fp8, everything else unchanged. How the file's scales were chosen is
    not documented; absmax / fp8 max per BFL tensor is assumed here."""
    from .bfl_layout import bfl_weights, gather, scatter

    layout = bfl_weights(transformer)
    modules = dict(transformer.named_modules())
    limit = torch.finfo(dtype).max
    scales = {}
    with torch.no_grad():
        for key, pieces in layout.items():
            weights = {p.module: modules[p.module].weight for p in pieces}
            fused = gather(weights, pieces).float()
            scale = float(fused.abs().max()) / limit or 1.0
            compute = weights[pieces[0].module].dtype
            stored = (fused / scale).to(dtype).to(compute) * torch.tensor(scale, dtype=torch.float32).to(compute)
            for module, weight in scatter(stored, pieces, weights).items():
                modules[module].weight.copy_(weight)
            for module in {p.module for p in pieces}:
                if modules[module].bias is not None:
                    modules[module].bias.copy_(fp8_plain(modules[module].bias, dtype))
            scales[key] = scale
    return WeightStorage(dtype, scales, layout)


def clamp_inputs_to_fp8(transformer: torch.nn.Module, dtype: torch.dtype = torch.float8_e4m3fn) -> int:
    """weight_dtype fp8_e4m3fn_fast on a GPU with fp8 matmuls: every Linear's input is clamped to +-448 and
    cast to fp8 before the product (comfy/ops.py:314-358, scale 1). Emulated as a forward pre-hook that
    rounds the input through fp8; returns the number of hooked layers."""
    limit = torch.finfo(dtype).max

    def hook(module, args):
        x = args[0]
        return (x.clamp(-limit, limit).to(dtype).to(x.dtype), *args[1:])

    linears = [m for m in transformer.modules() if isinstance(m, torch.nn.Linear)]
    for linear in linears:
        linear.register_forward_pre_hook(hook)
    return len(linears)
