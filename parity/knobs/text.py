"""Prompt encoding: which tokens CLIP and T5 see, with which weights, and in which precision.

diffusers truncates CLIP at 77 tokens and pads *and truncates* T5 to 512. ComfyUI (comfy/sd1_clip.py
SDTokenizer, comfy/text_encoders/flux.py) parses ``(text:1.2)`` weights, pads T5 to at least 256 and
never truncates it, splits CLIP into 77-token chunks (Flux uses only the first chunk's pooled output)
and keeps the text encoders' weights in float16 while computing in float32. Each alternative here
turns a prompt into a ``TokenPlan``; the engine runs the encoders on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import ParityError
from .registry import describe_family, register

describe_family("prompt_encoding", "how a prompt becomes CLIP and T5 tokens (length, padding, weights)")
describe_family("text_encoder_dtype", "the precision CLIP and T5 run in")

T5_MAX_TOKENS = 512  # diffusers' max_sequence_length
CLIP_LENGTH = 77
COMFY_T5_MIN_LENGTH = 256  # comfy/text_encoders/flux.py:13
COMFY_WORD_LENGTH = 8  # SDTokenizer.max_word_length: shorter words move whole to the next CLIP chunk
COMFY_T5_SPECIAL = {"end": 1, "pad": 0}  # comfy/text_encoders/sd3_clip.py:18


@dataclass(frozen=True)
class TokenPlan:
    """Token ids for one prompt. ``t5_weights`` (same length as ``t5_ids``) is None when every weight is 1;
    otherwise the engine also encodes ``t5_empty_ids`` and moves each weighted state away from it."""

    clip_ids: tuple[int, ...]
    t5_ids: tuple[int, ...]
    t5_weights: tuple[float, ...] | None = None
    t5_empty_ids: tuple[int, ...] = ()
    truncated: str = ""  # the prompt's end that T5 never saw
    notes: tuple[str, ...] = field(default=())


@register("prompt_encoding", "diffusers")
def encode_diffusers(prompt: str, clip_tokenizer, t5_tokenizer) -> TokenPlan:
    """CLIP truncated at 77, T5 padded and truncated to 512, the text taken literally (FluxPipeline.encode_prompt)."""
    clip = clip_tokenizer(prompt, padding="max_length", max_length=clip_tokenizer.model_max_length,
                          truncation=True).input_ids
    t5 = t5_tokenizer(prompt, padding="max_length", max_length=T5_MAX_TOKENS, truncation=True).input_ids
    full = t5_tokenizer(prompt, truncation=False).input_ids
    truncated = t5_tokenizer.decode(full[T5_MAX_TOKENS - 1:-1]) if len(full) > T5_MAX_TOKENS else ""
    return TokenPlan(tuple(clip), tuple(t5), truncated=truncated)


# --- ComfyUI's prompt syntax (comfy/sd1_clip.py:296-352) -----------------------------------------------

_ESCAPED = {"\\(": "\0\2", "\\)": "\0\1"}


def weighted_segments(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs: "(x)" multiplies by 1.1, "(x:1.3)" sets 1.3, nesting
    multiplies, "\\(" and "\\)" are literal parentheses, an unbalanced ")" is kept as text."""
    for escaped, marker in _ESCAPED.items():
        text = text.replace(escaped, marker)
    out = []
    for part in _top_level_groups(text):
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner, inner_weight = part[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += weighted_segments(inner, inner_weight)
        else:
            out.append((part, weight))
    return [(_unescape(t), w) for t, w in out]


def _unescape(text: str) -> str:
    for escaped, marker in _ESCAPED.items():
        text = text.replace(marker, escaped[1])
    return text


def _top_level_groups(text: str) -> list[str]:
    """Outermost "( ... )" groups and the text between them, in order (an open group runs to the end)."""
    parts, current, depth = [], "", 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                parts.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                parts.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        parts.append(current)
    return parts


def _segment_tokens(segments, tokenizer, has_start: bool) -> list[list[tuple[int, float]]]:
    """Each weighted run tokenized on its own, the tokenizer's start/end tokens removed."""
    words = []
    for text, weight in segments:
        if re.search(r"(^| |\n)embedding:", text):
            raise ParityError("the prompt uses ComfyUI's embedding: syntax (a textual-inversion embedding); "
                              "not modelled")
        if not text:
            continue
        ids = tokenizer(text).input_ids[1 if has_start else 0:-1]
        words.append([(token, weight) for token in ids])
    return words


def _clip_chunks(words, start: int, end: int, length: int = CLIP_LENGTH) -> list[list[tuple[int, float]]]:
    """SDTokenizer's batching: start token, words, end token, padded with the end token to 77; a word of 8 or
    more tokens is split across chunks, a shorter one moves whole to the next chunk."""
    chunks, chunk = [], [(start, 1.0)]
    for group in words:
        large = len(group) >= COMFY_WORD_LENGTH
        while group:
            if len(group) + len(chunk) > length - 1:
                room = length - len(chunk) - 1
                if large:
                    chunk += group[:room]
                    group = group[room:]
                    chunk.append((end, 1.0))
                else:
                    chunk.append((end, 1.0))
                    chunk += [(end, 1.0)] * room
                chunks.append(chunk)
                chunk = [(start, 1.0)]
            else:
                chunk += group
                group = []
    chunk.append((end, 1.0))
    chunk += [(end, 1.0)] * (length - len(chunk))
    chunks.append(chunk)
    return chunks


@register("prompt_encoding", "comfyui")
def encode_comfyui(prompt: str, clip_tokenizer, t5_tokenizer) -> TokenPlan:
    """ComfyUI: (text:w) weights, T5 padded with 0 to >= 256 and never truncated, CLIP pooled from the first
    77-token chunk; weighted T5 states become (z - z_empty)*w + z_empty (comfy/sd1_clip.py:27-80)."""
    segments = weighted_segments(prompt)
    clip_start, clip_end = clip_tokenizer("").input_ids[:2]
    chunks = _clip_chunks(_segment_tokens(segments, clip_tokenizer, True), clip_start, clip_end)
    t5_words = [pair for word in _segment_tokens(segments, t5_tokenizer, False) for pair in word]
    t5 = t5_words + [(COMFY_T5_SPECIAL["end"], 1.0)]
    t5 += [(COMFY_T5_SPECIAL["pad"], 1.0)] * (COMFY_T5_MIN_LENGTH - len(t5))
    weights = tuple(w for _, w in t5)
    weighted = any(w != 1.0 for w in weights)
    notes = []
    if len(chunks) > 1:
        notes.append(f"prompt longer than one CLIP chunk (75 tokens): ComfyUI splits it into {len(chunks)} chunks "
                     "and Flux uses the first chunk's pooled output only")
    if any(w != 1.0 for _, w in segments):
        notes.append("prompt weights " + ", ".join(f"{t.strip()!r}:{w:g}" for t, w in segments if w != 1.0)
                     + " applied to T5 as ComfyUI does")
    empty = [COMFY_T5_SPECIAL["end"]] + [COMFY_T5_SPECIAL["pad"]] * (len(t5) - 1) if weighted else []
    return TokenPlan(tuple(t for t, _ in chunks[0]), tuple(t for t, _ in t5), weights if weighted else None,
                     tuple(empty), notes=tuple(notes))


def apply_token_weights(states: torch.Tensor, empty: torch.Tensor, weights) -> torch.Tensor:
    """ComfyUI's weighting of one sequence: (z - z_empty) * w + z_empty where w != 1, else z unchanged."""
    out = states.clone()
    for j, w in enumerate(weights):
        if w != 1.0:
            out[:, j] = (states[:, j] - empty[:, j]) * w + empty[:, j]
    return out


@register("text_encoder_dtype", "pipeline")
def text_encoders_pipeline():
    """CLIP and T5 as the pipeline loaded them (its dtype, quantized with it): diffusers."""
    return None


@register("text_encoder_dtype", "fp16_fp32")
def text_encoders_fp16_fp32():
    """Weights stored in float16, computed in float32 (ComfyUI's text-encoder policy, model_management.py:882-897)."""
    return torch.float16, torch.float32
