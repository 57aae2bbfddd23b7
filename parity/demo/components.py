"""The demo model's parts: configurations, the tiny tokenizers and text encoders, pipeline assembly.

Shapes follow the real FLUX.1-Kontext-dev layout where the pipeline depends on it (VAE 8x down,
16 latent channels, 2x2 packing to in_channels 64, guidance embedding, T5 sequence 512, CLIP pooled),
so the model goes through exactly the code path of the 12B checkpoint; widths are tiny so that a
128 px, 8-step edit costs about 0.2 s on one CPU thread.

The text encoders are seeded random and frozen (the brief of the existing tiny model): the
transformer learns to read them. Three of T5's heads are set to attend to a fixed neighbour, so the
encoding carries word order (``_make_t5_attention_local``); with that alone, held-out recolour edits
went from 28% to 92% done. Their tokenizers are built here with one token per instruction
word (T5 Unigram pieces, CLIP byte-level BPE merges), so a word is one clean vector to attend to,
while any other text still tokenizes (letters and bytes are in the vocabularies too).
"""
from __future__ import annotations

from .scenes import WORDS

TEXT_SEED = 20250
T5_DIM = 32  # joint_attention_dim
CLIP_DIM = 32  # pooled_projection_dim

TRANSFORMER_KW = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels x 2x2 packing, as in the real model
    out_channels=None,
    num_layers=1,
    num_single_layers=3,
    attention_head_dim=32,
    num_attention_heads=3,  # hidden width 96; heads of 32 are faster on CPU than more, narrower ones
    joint_attention_dim=T5_DIM,
    pooled_projection_dim=CLIP_DIM,
    guidance_embeds=True,
    axes_dims_rope=(8, 12, 12),  # (image/control index, y, x); sums to the head dim
)
VAE_KW = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,  # 4 blocks = 3 downsamples = 8x, as in Flux
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 64),  # narrow at full resolution, where convolutions cost most
    layers_per_block=1,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=1,
    sample_size=128,
    use_quant_conv=False,  # as in the Flux VAE
    use_post_quant_conv=False,
    mid_block_add_attention=False,
)
SCHEDULER_KW = dict(  # FLUX.1-Kontext-dev's scheduler_config.json
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2 / CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to one word, as the tokenizer will."""
    while len(pieces) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def make_clip_tokenizer():
    """Byte-level BPE: every byte (alone and word-final), then merges that make each word one token.

    Each word is first split by the merges made so far; new merges (ranked after all earlier ones,
    so earlier words keep their single token) then join its pieces left to right.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in WORDS:
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            ranks[(left, right)] = len(merges)
            merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def make_t5_tokenizer():
    """Unigram: specials first (<pad> 0, </s> 1, <unk> 2, as T5), letters, then whole words scored higher."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()[]":
        pieces += [(ch, -5.0), ("▁" + ch, -4.5)]
    pieces += [("▁" + w, -2.0) for w in WORDS if len(w) > 1]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def make_text_encoders(clip_tokenizer, t5_tokenizer):
    """Seeded random CLIP and T5 encoders (frozen: the demo never trains them)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(TEXT_SEED)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=CLIP_DIM, intermediate_size=37, projection_dim=CLIP_DIM,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id))
    torch.manual_seed(TEXT_SEED + 1)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=T5_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1))
    _make_t5_attention_local(t5)
    for model in (clip, t5):
        model.eval().requires_grad_(False)
    return clip, t5


# T5 heads given a strong relative-position bias: head -> relative position (key minus query) it attends to.
LOCAL_HEADS = {0: -1, 1: +1, 2: 0}  # the previous token, the next token, the token itself; head 3 stays random
LOCAL_BIAS = 10.0  # an attention logit e^10 above the rest: ~99% on that one token even among 511 pads


def _make_t5_attention_local(t5) -> None:
    """Let T5 encode word order: three heads attend to a fixed neighbour.

    Why: a seeded random T5 with 500 padding tokens spreads every head's attention over the padding,
    so each word's encoding is its own embedding plus the same padding average. It encodes a bag of
    words: "make the red circle blue" and "make the blue circle red" gave "red" encodings 0.024 apart
    (norm 5.7). A recolour prompt names two colours, and only their order says which is which. With
    these heads, a word's encoding carries its neighbours ("the red" vs "circle red"), so the
    transformer can tell the colour to find from the colour to paint. The bias table is shared by all
    layers, as in T5; the pattern is set on top of the seeded random values.
    """
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    attention = t5.encoder.block[0].layer[0].SelfAttention
    buckets = T5Attention._relative_position_bucket(
        torch.tensor(list(LOCAL_HEADS.values())), bidirectional=True,
        num_buckets=attention.relative_attention_num_buckets, max_distance=attention.relative_attention_max_distance)
    with torch.no_grad():
        for head, bucket in zip(LOCAL_HEADS, buckets.tolist()):
            attention.relative_attention_bias.weight[bucket, head] += LOCAL_BIAS


def make_vae(scaling_factor: float = 1.0, shift_factor: float = 0.0, seed: int = 0):
    """The tiny AutoencoderKL; the two factors are measured on the data after training (vae.py)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_KW, scaling_factor=scaling_factor, shift_factor=shift_factor)


def make_transformer(seed: int = 0):
    """Seeded init, then adaLN-Zero (DiT): every block's modulation and the output layer start at zero.

    Why: each block then starts as the identity and the model's first prediction is 0, which trains
    markedly faster than the default init for a model that must learn everything in minutes. Training
    moves every row away from zero (checked at build time: an all-zero row would become NaN under
    optimum-quanto qfloat8, which a parity knob applies).
    """
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TRANSFORMER_KW)
    zero = [b.norm1.linear for b in transformer.transformer_blocks]
    zero += [b.norm1_context.linear for b in transformer.transformer_blocks]
    zero += [b.norm.linear for b in transformer.single_transformer_blocks]
    zero += [transformer.norm_out.linear, transformer.proj_out]
    with torch.no_grad():
        for layer in zero:
            layer.weight.zero_()
            layer.bias.zero_()
    return transformer


def zero_rows(transformer) -> list[str]:
    """Linear layers with an all-zero weight row (NaN under qfloat8's per-row absmax scale)."""
    import torch

    return [name for name, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear) and bool((m.weight.abs().amax(1) == 0).any())]


def make_pipeline(vae, transformer, text=None):
    """A FluxKontextPipeline from these parts; ``text`` = (clip_tok, t5_tok, clip, t5) or freshly built."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline

    if text is None:
        clip_tok, t5_tok = make_clip_tokenizer(), make_t5_tokenizer()
        text = (clip_tok, t5_tok, *make_text_encoders(clip_tok, t5_tok))
    clip_tok, t5_tok, clip, t5 = text
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_KW), vae=vae, text_encoder=clip,
        tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)


def load_pipeline(model_dir, dtype=None):
    """The saved demo model through the same from_pretrained path as the 12B checkpoint."""
    import torch
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline.from_pretrained(
        str(model_dir), use_safetensors=True, local_files_only=True, dtype=dtype or torch.float32)
