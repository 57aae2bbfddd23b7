"""LoRA files: read once, format detected, every key accounted for, applied in a chosen mode.

A LoRA that silently applies nothing is the commonest "my LoRA does nothing" report
(diffusers only logs a warning), so every file gets an audit and a file of which no key
reaches the transformer is an error. Files in ComfyUI's formats (kohya ``lora_unet_...``, BFL
``diffusion_model.double_blocks...``) go through diffusers' own converters.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import ParityError
from ..knobs import lookup
from ..knobs.lora_modes import LoraMode, lora_merged_fp32, lora_unmerge_aitk

PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
_PAIR = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[^.]+)?\.weight$")


@dataclass
class LoraAudit:
    path: str
    format: str
    keys_in_file: int
    modules_in_file: int
    modules_applied: int
    dropped: dict[str, str] = field(default_factory=dict)  # module or key -> reason
    rank: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "lora_path": self.path,
            "lora_format": self.format,
            "lora_keys_in_file": self.keys_in_file,
            "lora_modules_in_file": self.modules_in_file,
            "lora_modules_applied": self.modules_applied,
            "lora_dropped": len(self.dropped),
        }


@dataclass
class LoraFile:
    """A LoRA normalised to transformer module paths with float32 down/up as stored in the file.

    ``alpha_scales`` holds alpha / rank per module where the file has alpha keys (AI Toolkit keeps that
    scale apart from the weights and applies it after lora_up; its own PEFT-format files carry none).
    """

    path: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    audit: LoraAudit
    alpha_scales: dict[str, float] = field(default_factory=dict)

    def alpha_scale(self, module: str) -> float:
        return self.alpha_scales.get(module, 1.0)

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """diffusers/PEFT names; alpha folded into lora_A (PEFT runs with alpha = rank)."""
        out = {}
        for module, (down, up) in self.modules.items():
            scale = self.alpha_scale(module)
            out[f"transformer.{module}.lora_A.weight"] = down * scale if scale != 1.0 else down
            out[f"transformer.{module}.lora_B.weight"] = up
        return out


@contextmanager
def _open_safetensors(path: Path):
    """safe_open after the checks that need no reading; pickles are refused without being opened."""
    from safetensors import SafetensorError, safe_open

    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ParityError(
            "LoRA is a pickle-based checkpoint; kontext-parity loads LoRAs only from .safetensors "
            "(a pickle can run code when loaded)", source=path)
    if not path.is_file():
        raise ParityError("LoRA file not found", source=path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError, ValueError) as err:
        raise ParityError(f"LoRA is not a readable safetensors file (truncated or corrupt?): {err}",
                          source=path) from None


def check_lora_file(path: str | Path) -> None:
    """Header only (cheap): a truncated download fails before any model loads, not hours into a run."""
    with _open_safetensors(Path(path)) as handle:
        if not list(handle.keys()):
            raise ParityError("the LoRA's safetensors file holds no tensors", source=path)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata; only safetensors are read, pickles are refused without being opened."""
    with _open_safetensors(path) as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if not tensors:
        raise ParityError("the LoRA's safetensors file holds no tensors", source=path)
    return tensors, metadata


def detect_format(keys) -> str:
    keys = list(keys)
    if any(k.startswith(("lora_unet_", "lora_transformer_", "lora_te")) for k in keys):
        return "kohya"
    if any(k.startswith("diffusion_model.") for k in keys):
        return "diffusion_model"
    if any("processor" in k for k in keys):
        return "xlabs"
    if any(k.startswith("transformer.") for k in keys):
        return "peft"
    if any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in keys):
        return "peft-unprefixed"
    if any(k.startswith(("double_blocks.", "single_blocks.")) for k in keys):
        return "bfl"
    return "unknown"


def _bfl_as_kohya(tensors: dict) -> dict:
    """BFL module names (ComfyUI's layout, fused qkv / linear1) under the ``diffusion_model.`` prefix that
    diffusers' kohya converter reads (as ComfyUI saves them); PEFT-style lora_A/lora_B are the same
    matrices as lora_down/lora_up."""
    out = {}
    for key, value in tensors.items():
        key = key[len("diffusion_model."):] if key.startswith("diffusion_model.") else key
        key = key.replace(".lora_A.", ".lora_down.").replace(".lora_B.", ".lora_up.")
        out[f"diffusion_model.{key}"] = value
    return out


def _to_diffusers_keys(tensors: dict, fmt: str, path: Path) -> dict:
    """Rename to diffusers' 'transformer.<module>.lora_A/B.weight' where we know how."""
    if fmt == "peft":
        return tensors
    if fmt == "peft-unprefixed":
        return {f"transformer.{k}": v for k, v in tensors.items()}
    if fmt in ("diffusion_model", "bfl"):
        stripped = {k[len("diffusion_model."):] if k.startswith("diffusion_model.") else k: v for k, v in tensors.items()}
        if detect_format(stripped) != "bfl":  # diffusers module names under a diffusion_model. prefix
            return {f"transformer.{k}" if not k.startswith("transformer.") else k: v for k, v in stripped.items()}
        tensors = _bfl_as_kohya(tensors)
    from diffusers import FluxKontextPipeline

    # float32 first, so the converters' alpha folding does not round in the file's dtype
    upcast = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        converted = FluxKontextPipeline.lora_state_dict(upcast)
    except AssertionError:  # _convert_to_ai_toolkit_cat: assert sum(dims) == up_weight.shape[0]
        raise ParityError(
            f"cannot convert a {fmt} LoRA: diffusers' converter splits each single_blocks linear1 into q, k, v "
            "and MLP rows of FLUX.1's full size (3072+3072+3072+12288); this file's rows do not add up to that, "
            "so it was made for a transformer of another size", source=path) from None
    except Exception as err:  # the converters raise bare errors on foreign layouts
        raise ParityError(f"cannot convert a {fmt} LoRA: {type(err).__name__}: {err}", source=path) from None
    return converted[0] if isinstance(converted, tuple) else converted


def load_lora_file(path: str | Path, transformer) -> LoraFile:
    """Read, convert and audit one LoRA against a transformer's modules."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    fmt = detect_format(tensors)
    keys = _to_diffusers_keys(tensors, fmt, path)
    alphas = {k[: -len(".alpha")]: float(v) for k, v in keys.items() if k.endswith(".alpha")}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    dropped: dict[str, str] = {}
    for key, value in keys.items():
        if key.endswith(".alpha"):
            continue
        match = _PAIR.match(key)
        if not match or not match["module"].startswith("transformer."):
            dropped[key] = "not a transformer LoRA weight (text encoder and other keys are not applied)"
            continue
        kind = "down" if match["kind"] in ("lora_A", "lora_down") else "up"
        pairs.setdefault(match["module"][len("transformer."):], {})[kind] = value
    named = dict(transformer.named_modules())
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    alpha_scales: dict[str, float] = {}
    rank = None
    for module, pair in sorted(pairs.items()):
        target = named.get(module)
        if target is not None and hasattr(target, "base_layer"):
            target = target.base_layer
        if "down" not in pair or "up" not in pair:
            dropped[module] = "half of the down/up pair is missing"
        elif target is None:
            dropped[module] = "no such module in the transformer"
        elif not isinstance(target, torch.nn.Linear):
            dropped[module] = f"targets a {type(target).__name__}, only Linear layers are supported"
        else:
            down, up = pair["down"].float(), pair["up"].float()
            if down.dim() != 2 or up.dim() != 2:
                down, up = down.flatten(1), up.flatten(1)
            if down.shape[1] != target.in_features or up.shape[0] != target.out_features or up.shape[1] != down.shape[0]:
                dropped[module] = (f"shape {tuple(up.shape)}x{tuple(down.shape)} does not fit "
                                   f"Linear({target.in_features}, {target.out_features})")
                continue
            alpha = alphas.get(f"transformer.{module}")
            if alpha is not None and alpha != 0:  # AI Toolkit: alpha None or 0 means alpha = rank
                alpha_scales[module] = alpha / down.shape[0]
            modules[module] = (down.contiguous(), up.contiguous())
            rank = down.shape[0]
    audit = LoraAudit(str(path), fmt, len(tensors), len(pairs), len(modules), dropped, rank, metadata)
    if not modules:
        reasons = sorted(set(dropped.values()))
        sample = ", ".join(list(tensors)[:3])
        raise ParityError(
            f"no key of this LoRA applies to the FLUX.1-Kontext transformer (format {fmt}; {len(tensors)} keys, "
            f"e.g. {sample}; reasons: {'; '.join(reasons) or 'no LoRA pairs found'})", source=path)
    return LoraFile(str(path), modules, audit, alpha_scales)


class LoraApplier:
    """Applies a case's LoRAs to one pipeline and undoes them, leaving the exact base behind.

    Adapters are loaded into PEFT once per file and switched by adapter weight; fused and
    merged modes snapshot the weights they change and copy them back afterwards, because
    unfusing (or AI Toolkit's merge_out) in bf16 does not give the base back bit for bit.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.adapters: dict[str, str] = {}  # file path -> adapter name
        # Active PEFT adapters and weights, or None when disabled: switching only when a case needs
        # another state saves two walks over every module per case.
        self._peft_state: tuple | None = None
        self._quantized: bool | None = None

    def _adapter(self, lora: LoraFile) -> str:
        if lora.path not in self.adapters:
            name = f"lora{len(self.adapters)}"
            with warnings.catch_warnings():  # several adapters side by side are the design, not a mistake
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                self.pipe.load_lora_weights(lora.peft_state_dict(), adapter_name=name)
            self.adapters[lora.path] = name
        return self.adapters[lora.path]

    def quantized(self) -> bool:
        from .quantize import is_quantized

        if self._quantized is None:
            self._quantized = any(is_quantized(m) for m in self.transformer.modules())
        return self._quantized

    def _set_peft(self, state: tuple | None) -> None:
        if state == self._peft_state:
            return
        self._peft_state = "unknown"  # stays so if switching fails halfway
        if state is None:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters(list(state[0]), list(state[1]))
        self._peft_state = state

    # --- the three mechanisms of parity.knobs.lora_modes: each applies a group and returns its undo ------
    def _apply(self, mode: LoraMode, items: list[tuple[LoraFile, float]]) -> Callable[[], None]:
        if mode.mechanism == "peft":
            return self._apply_peft(items, mode.fuse)
        if mode.mechanism == "weights":
            return self._apply_weights(items, mode)
        return self._apply_forward(items, mode.branch)

    def _apply_peft(self, items, fuse: bool) -> Callable[[], None]:
        names = self.set_adapters(items)
        if not fuse:
            return lambda: None
        restore = self.snapshot({m for lora, _ in items for m in lora.modules})
        self.adapters_unknown()  # until unfused below, whatever happens

        def undo() -> None:
            self.pipe.unfuse_lora(components=["transformer"])  # clears PEFT's merged flags, also after a partial fuse
            restore()

        try:
            self.pipe.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=names)
        except BaseException:
            undo()
            raise
        return undo

    def _apply_weights(self, items, mode: LoraMode) -> Callable[[], None]:
        """Each LoRA merged in turn (the merge's dtype decides when it rounds), then written back."""
        modules = {m for lora, _ in items for m in lora.modules}
        storage = getattr(self.transformer, "_parity_storage", None) if mode.stochastic_fp8 else None
        if storage is not None:  # fp8: ComfyUI patches and rounds whole fused BFL tensors, seeded by their key
            from .bfl_layout import owner_of

            owner = owner_of(storage.layout)
            modules |= {p.module for m in modules if m in owner for p in storage.layout[owner[m]]}
        restore = self.snapshot(modules)
        try:
            with torch.no_grad():
                merged = {}
                for lora, scale in items:
                    for module, (down, up) in lora.modules.items():
                        weight = merged.get(module, self.linear(module).weight)
                        d, u = down.to(weight.device), up.to(weight.device)
                        merged[module] = mode.merge(weight, d, u, float(scale), lora.alpha_scale(module))
                if storage is None:
                    for module, weight in merged.items():
                        linear = self.linear(module)
                        linear.weight.copy_(weight.to(linear.weight.dtype))
                else:
                    self._round_fp8_fused(storage, merged)
        except BaseException:
            restore()
            raise
        return restore

    def _round_fp8_fused(self, storage, patched: dict) -> None:
        """Round each BFL tensor a patch touched back into fp8, stochastically with the CRC32 of its key as
        seed (comfy/model_patcher.py:41 and :617, comfy/float.py:50-67); scaled fp8 divides by the tensor's
        scale first and multiplies back after (comfy/ops.py set_weight / convert_weight)."""
        import zlib

        from .bfl_layout import gather, owner_of, scatter
        from .quantize import stochastic_round_fp8

        owner = owner_of(storage.layout)
        for key in sorted({owner[m] for m in patched if m in owner}):
            pieces = storage.layout[key]
            current = {p.module: patched.get(p.module, self.linear(p.module).weight).float() for p in pieces}
            fused = gather(current, pieces)
            scale = storage.scales.get(key)
            if scale is not None:
                fused = fused / scale
            rounded = stochastic_round_fp8(fused, storage.dtype, zlib.crc32(key.encode()))
            compute = self.linear(pieces[0].module).weight.dtype
            value = rounded.to(compute)
            if scale is not None:
                value = value * torch.tensor(scale, dtype=torch.float32).to(compute)
            for module, weight in scatter(value, pieces, current).items():
                self.linear(module).weight.copy_(weight)
        for module in patched:
            if module not in owner:  # a module with no BFL counterpart: rounded to nearest
                self.linear(module).weight.copy_(patched[module].to(self.linear(module).weight.dtype))

    def _apply_forward(self, items, branch: Callable) -> Callable[[], None]:
        hooks = []
        for lora, scale in items:
            for module, (down, up) in lora.modules.items():
                linear = self.linear(module)
                d, u = down.to(linear.weight.device), up.to(linear.weight.device)
                hooks.append(linear.register_forward_hook(
                    lambda mod, args, out, d=d, u=u, s=float(scale), a=lora.alpha_scale(module):
                    branch(args[0], out, d, u, s, a)))
        return lambda: [hook.remove() for hook in hooks]

    def set_adapters(self, items: list[tuple[LoraFile, float]]) -> list[str]:
        """Load each file as a PEFT adapter once, then activate exactly these with these weights."""
        names = [self._adapter(lora) for lora, _ in items]
        self._set_peft((tuple(names), tuple(float(scale) for _, scale in items)))
        return names

    def adapters_unknown(self) -> None:
        """The PEFT state changed behind our back (a fuse): set it again before the next use."""
        self._peft_state = "unknown"

    def linear(self, module: str) -> torch.nn.Linear:
        """The plain Linear of a transformer module, under PEFT's wrapper if an adapter is loaded."""
        target = self.transformer.get_submodule(module)
        return target.base_layer if hasattr(target, "base_layer") else target

    def snapshot(self, modules) -> Callable[[], None]:
        """Copy these modules' weights aside; the returned callable copies them back, bit for bit."""
        saved = {m: self.linear(m).weight.detach().to("cpu", copy=True) for m in modules}

        def restore() -> None:
            with torch.no_grad():
                for module, weight in saved.items():
                    linear = self.linear(module)
                    linear.weight.copy_(weight.to(linear.weight.device))

        return restore

    def _check(self, items) -> None:
        modes = {m for _, _, m in items}
        if len({m for m in modes if lookup("lora_mode", m)().mechanism == "peft"}) > 1:
            raise ParityError("a case cannot mix fused and dynamic LoRAs (both drive the same PEFT adapters)")
        if modes - {"branch"} and self.quantized():
            bad = sorted(modes - {"branch"})
            raise ParityError(
                f"LoRA mode {', '.join(bad)} does not work on a quantized (optimum-quanto) base: PEFT cannot load "
                "adapters onto quanto layers and their fp8 weights cannot be merged into. Use mode 'branch', "
                "which is what AI Toolkit samples quantized runs with")

    @contextmanager
    def applied(self, items: list[tuple[LoraFile, float, str]]):
        """items: (file, scale, mode). Each mode applies its group; undone in reverse, also after an error."""
        self._check(items)
        if self.adapters and not any(lookup("lora_mode", m)().mechanism == "peft" for _, _, m in items):
            self._set_peft(None)
        groups: dict[str, list[tuple[LoraFile, float]]] = {}
        for lora, scale, mode in items:
            groups.setdefault(mode, []).append((lora, scale))
        undo: list[Callable[[], None]] = []
        try:
            for mode, group in groups.items():
                undo.append(self._apply(lookup("lora_mode", mode)(), group))
            yield
        finally:
            for step in reversed(undo):
                step()

    # --- reproducing a training run's history -------------------------------------------------
    def aitk_merge_cycle(self, lora: LoraFile, multiplier: float = 1.0) -> float:
        """Merge a LoRA in and out of the base exactly as AI Toolkit does around a preview batch.

        AI Toolkit (base_model.py generate_images) merges the network into an unquantized base when
        every prompt of a batch has the same multiplier and merges it out afterwards; both steps round
        to the base dtype, so the base it samples the NEXT batch from has drifted. Call this once per
        earlier merged batch (in order) to rebuild that drifted base; it stays changed until
        ``restored_base`` exits. Returns the largest absolute change this cycle made to any weight.
        """
        self._check([(lora, multiplier, "merged_fp32")])
        drift = 0.0
        with torch.no_grad():
            for module, (down, up) in lora.modules.items():
                linear = self.linear(module)
                before = linear.weight.detach().clone()
                d, u, a = down.to(before.device), up.to(before.device), lora.alpha_scale(module)
                merged = lora_merged_fp32(before, d, u, multiplier, a)
                linear.weight.copy_(lora_unmerge_aitk(merged, d, u, multiplier, a))
                drift = max(drift, float((linear.weight.float() - before.float()).abs().max()))
        return drift

    @contextmanager
    def restored_base(self):
        """Snapshot every transformer weight and put it back on exit (after ``aitk_merge_cycle``)."""
        params = {k: p for k, p in self.transformer.named_parameters()
                  if ".lora_" not in k and getattr(p, "_qtype", None) is None}  # quanto weights never merge
        state = {k: p.detach().clone() for k, p in params.items()}
        try:
            yield
        finally:
            with torch.no_grad():
                for key, value in state.items():
                    params[key].copy_(value)
