"""Load llama2.c "v0" checkpoints (karpathy/llama2.c, `export.py` legacy format) into transformers.

The file is a 7-int32 header followed by raw little-endian float32 arrays, exactly what
llama2.c's `run.c` memory-maps. We read it the same way, with numpy and no pickle, so a
checkpoint can never execute code. Layout (L layers, D = dim, H = hidden_dim, T = seq_len,
hd = D / n_heads, KV = n_kv_heads * hd):

    header  dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len   (int32)
    token embeddings (V, D) · attention RMSNorm (L, D) · wq (L, D, D) · wk (L, KV, D)
    wv (L, KV, D) · wo (L, D, D) · FFN RMSNorm (L, D) · w1 (L, H, D) · w2 (L, D, H)
    w3 (L, H, D) · final RMSNorm (D,) · two legacy RoPE tables (T, hd / 2) each, unused
    classifier (V, D), present only when vocab_size < 0 (untied, as `run.c` reads it)

Matrices are (out, in), like `nn.Linear.weight`. llama2.c rotates interleaved pairs
(x[2i], x[2i+1]) while transformers' `rotate_half` pairs x[i] with x[i + hd/2], so the rows
of wq and wk are permuted per head: the reordering transformers applies to GGUF Llama weights
(`_reverse_permute_weights` in `modeling_gguf_pytorch_utils.py`), which share llama2.c's
interleaved convention. Format notes: shared/models/stories260K/README.md.
"""

import math
import os
from typing import NamedTuple

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

_FLOAT32 = np.dtype("<f4")


class _Header(NamedTuple):
    """The int32 fields that open a v0 file, in file order."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int  # run.c: negative means an untied classifier stored after the RoPE tables
    seq_len: int

    @property
    def tied(self) -> bool:
        return self.vocab_size > 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


_HEADER_BYTES = 4 * len(_Header._fields)


def _file_layout(header: _Header) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the float32 arrays after the header, in file order."""
    L, D, H = header.n_layers, header.dim, header.hidden_dim
    V, KV = abs(header.vocab_size), header.n_kv_heads * header.head_dim
    layout = [
        ("embed", (V, D)),
        ("attn_norm", (L, D)),
        ("wq", (L, D, D)),
        ("wk", (L, KV, D)),
        ("wv", (L, KV, D)),
        ("wo", (L, D, D)),
        ("ffn_norm", (L, D)),
        ("w1", (L, H, D)),
        ("w2", (L, D, H)),
        ("w3", (L, H, D)),
        ("final_norm", (D,)),
        ("rope_tables", (2, header.seq_len, header.head_dim // 2)),  # freq_cis real, imag: unused
    ]
    if not header.tied:
        layout.append(("classifier", (V, D)))
    return layout


def _halves_from_pairs(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's output rows from interleaved RoPE pairs to rotate-half order.

    Row 2i (resp. 2i+1) of a head becomes row i (resp. i + hd/2), so transformers'
    `rotate_half` rotates the same pairs with the same frequencies as llama2.c.
    """
    out_dim, in_dim = weight.shape  # (n_heads * hd, D)
    head_dim = out_dim // n_heads
    return (
        weight.reshape(n_heads, head_dim // 2, 2, in_dim)  # (n_heads, hd/2, 2, D)
        .transpose(1, 2)  # (n_heads, 2, hd/2, D)
        .reshape(out_dim, in_dim)
    )


def read_llama2c_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Read a llama2.c v0 checkpoint into a `LlamaConfig` and a transformers-named state dict.

    The state dict holds float32 copies (the memory map is closed on return). With a tied
    classifier (positive vocab_size) it has no `lm_head.weight`: `tie_word_embeddings=True`
    tells transformers to share `model.embed_tokens.weight`.

    Raises:
        ValueError: the header is short or inconsistent, or the file size differs from the
            size the header implies (a truncated download, or not a v0 checkpoint).
    """
    actual_bytes = os.path.getsize(path)
    fields = np.fromfile(path, dtype="<i4", count=len(_Header._fields))
    if fields.size < len(_Header._fields):
        raise ValueError(
            f"{path}: expected at least the {_HEADER_BYTES}-byte llama2.c header, "
            f"but the file has {actual_bytes} bytes"
        )
    header = _Header(*map(int, fields))
    if (
        min(header._replace(vocab_size=abs(header.vocab_size))) <= 0
        or header.dim % header.n_heads
        or header.n_heads % header.n_kv_heads
        or header.head_dim % 2  # RoPE rotates pairs
    ):
        raise ValueError(f"{path}: header {header._asdict()} does not describe a llama2.c model")

    layout = _file_layout(header)
    counts = [math.prod(shape) for _, shape in layout]
    expected_bytes = _HEADER_BYTES + _FLOAT32.itemsize * sum(counts)
    if actual_bytes != expected_bytes:
        raise ValueError(
            f"{path}: header {header._asdict()} implies {expected_bytes} bytes, "
            f"but the file has {actual_bytes} bytes"
        )

    flat = np.memmap(path, dtype=_FLOAT32, mode="r", offset=_HEADER_BYTES)
    arrays: dict[str, torch.Tensor] = {}
    start = 0
    for (name, shape), count in zip(layout, counts, strict=True):
        # np.array copies out of the read-only map, giving torch writable, owned memory.
        arrays[name] = torch.from_numpy(np.array(flat[start : start + count]).reshape(shape))
        start += count
    del flat

    state = {
        "model.embed_tokens.weight": arrays["embed"],  # (V, D)
        "model.norm.weight": arrays["final_norm"],  # (D,)
    }
    for i in range(header.n_layers):
        prefix = f"model.layers.{i}."
        wq = _halves_from_pairs(arrays["wq"][i], header.n_heads)  # (D, D)
        wk = _halves_from_pairs(arrays["wk"][i], header.n_kv_heads)  # (KV, D)
        state |= {
            prefix + "input_layernorm.weight": arrays["attn_norm"][i],
            prefix + "self_attn.q_proj.weight": wq,
            prefix + "self_attn.k_proj.weight": wk,
            prefix + "self_attn.v_proj.weight": arrays["wv"][i],
            prefix + "self_attn.o_proj.weight": arrays["wo"][i],
            prefix + "post_attention_layernorm.weight": arrays["ffn_norm"][i],
            prefix + "mlp.gate_proj.weight": arrays["w1"][i],
            prefix + "mlp.down_proj.weight": arrays["w2"][i],
            prefix + "mlp.up_proj.weight": arrays["w3"][i],
        }
    if not header.tied:
        state["lm_head.weight"] = arrays["classifier"]  # (V, D)

    config = LlamaConfig(
        vocab_size=abs(header.vocab_size),
        hidden_size=header.dim,
        intermediate_size=header.hidden_dim,
        num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        max_position_embeddings=header.seq_len,
        rms_norm_eps=1e-5,  # llama2.c's model.py and run.c
        # transformers 5 keeps RoPE settings in rope_parameters (rope_theta is no longer a field).
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=header.tied,
        bos_token_id=1,  # llama2.c's sentencepiece tokenizers: 1 <s>, 2 </s>
        eos_token_id=2,
        hidden_act="silu",
    )
    return config, state


def load_llama2c_model(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> LlamaForCausalLM:
    """Build a `LlamaForCausalLM` in eval mode from a llama2.c v0 checkpoint, fully offline.

    `from_pretrained(None, config=..., state_dict=...)` is transformers' documented way to
    load in-memory weights: it builds on the meta device (no wasted random init), ties the
    classifier, casts to `dtype` and returns the model in eval mode. It only logs missing
    or unexpected keys, so we check its loading report and raise instead.

    Attention is "eager": the literal softmax(QKᵀ/√hd)·V of llama2.c, in the same order on
    every device, while "sdpa" picks a backend-specific fused kernel. Both reproduce the
    reference greedy ids; at llama2.c sizes (seq_len ≤ 1024) eager costs nothing noticeable.
    """
    config, state = read_llama2c_checkpoint(path)
    model, loading_info = LlamaForCausalLM.from_pretrained(
        None,
        config=config,
        state_dict=state,
        dtype=dtype,
        attn_implementation="eager",
        output_loading_info=True,
    )
    problems = {kind: found for kind, found in loading_info.items() if found}
    if problems:
        raise ValueError(f"{path}: weights do not fit LlamaForCausalLM: {problems}")
    return model
