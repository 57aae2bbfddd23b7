"""The original (BFL) FLUX checkpoint layout, as ComfyUI holds the model, in diffusers module names.

ComfyUI keeps FLUX in BFL's layout: one fused ``qkv`` Linear per stream, ``linear1`` = q, k, v and the
MLP input of a single block, and the final modulation with shift and scale swapped. Whatever ComfyUI
does per *tensor* (the scale of an fp8_scaled weight, the seed of the stochastic rounding after a
LoRA patch, which is CRC32 of the tensor's key, comfy/model_patcher.py:41 and :617) acts on these
fused tensors, so reproducing it needs, for every BFL weight, the diffusers rows it is made of.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Piece:
    module: str  # diffusers Linear module
    rows: slice  # rows of that module's weight, in the order they appear in the BFL tensor


def _whole(*modules: str) -> list[Piece]:
    return [Piece(m, slice(None)) for m in modules]


def bfl_weights(transformer) -> dict[str, list[Piece]]:
    """BFL state-dict key (``diffusion_model.`` + name + ``.weight``) -> the diffusers rows that form it."""
    config = transformer.config
    layout: dict[str, list[Piece]] = {
        "img_in": _whole("x_embedder"),
        "txt_in": _whole("context_embedder"),
        "time_in.in_layer": _whole("time_text_embed.timestep_embedder.linear_1"),
        "time_in.out_layer": _whole("time_text_embed.timestep_embedder.linear_2"),
        "vector_in.in_layer": _whole("time_text_embed.text_embedder.linear_1"),
        "vector_in.out_layer": _whole("time_text_embed.text_embedder.linear_2"),
        "final_layer.linear": _whole("proj_out"),
    }
    if config.guidance_embeds:
        layout["guidance_in.in_layer"] = _whole("time_text_embed.guidance_embedder.linear_1")
        layout["guidance_in.out_layer"] = _whole("time_text_embed.guidance_embedder.linear_2")
    half = transformer.norm_out.linear.out_features // 2  # BFL: (shift, scale); diffusers: (scale, shift)
    layout["final_layer.adaLN_modulation.1"] = [Piece("norm_out.linear", slice(half, None)),
                                                Piece("norm_out.linear", slice(0, half))]
    for i in range(config.num_layers):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        layout.update({
            f"{b}.img_attn.qkv": _whole(f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"),
            f"{b}.txt_attn.qkv": _whole(f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"),
            f"{b}.img_attn.proj": _whole(f"{d}.attn.to_out.0"),
            f"{b}.txt_attn.proj": _whole(f"{d}.attn.to_add_out"),
            f"{b}.img_mlp.0": _whole(f"{d}.ff.net.0.proj"),
            f"{b}.img_mlp.2": _whole(f"{d}.ff.net.2"),
            f"{b}.txt_mlp.0": _whole(f"{d}.ff_context.net.0.proj"),
            f"{b}.txt_mlp.2": _whole(f"{d}.ff_context.net.2"),
            f"{b}.img_mod.lin": _whole(f"{d}.norm1.linear"),
            f"{b}.txt_mod.lin": _whole(f"{d}.norm1_context.linear"),
        })
    for i in range(config.num_single_layers):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        layout.update({
            f"{b}.linear1": _whole(f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"),
            f"{b}.linear2": _whole(f"{d}.proj_out"),
            f"{b}.modulation.lin": _whole(f"{d}.norm.linear"),
        })
    return {f"diffusion_model.{name}.weight": pieces for name, pieces in layout.items()}


def owner_of(layout: dict[str, list[Piece]]) -> dict[str, str]:
    """diffusers module -> the BFL key its weight belongs to."""
    return {piece.module: key for key, pieces in layout.items() for piece in pieces}


def gather(weights: dict[str, torch.Tensor], pieces: list[Piece]) -> torch.Tensor:
    """The BFL tensor from diffusers weights (module -> weight)."""
    return torch.cat([weights[p.module][p.rows] for p in pieces], dim=0)


def scatter(fused: torch.Tensor, pieces: list[Piece], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split a BFL tensor back into diffusers weights (module -> weight, shapes as in ``weights``)."""
    out = {p.module: torch.empty_like(weights[p.module], dtype=fused.dtype) for p in pieces}
    start = 0
    for p in pieces:
        rows = out[p.module][p.rows]
        out[p.module][p.rows] = fused[start:start + rows.shape[0]]
        start += rows.shape[0]
    return out
