"""The llama2.c loader reproduces stories260K's independently computed golden values.

The golden values (shared/models/stories260K/reference_greedy.json) were computed outside
transformers, so matching them checks the header, the array order, the RoPE row permutation
and the tied classifier together.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from del_server.models.llama2c import load_llama2c_model, read_llama2c_checkpoint

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MODEL_DIR = SHARED / "models" / "stories260K"
CHECKPOINT = MODEL_DIR / "stories260K.bin"
CHECKPOINT_BYTES = 1_056_540  # README: 7 int32 header + 264,128 float32
TINYSTORIES = SHARED / "data" / "tinystories" / "tinystories_val_head_dev.txt"


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return load_llama2c_model(CHECKPOINT)


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((MODEL_DIR / "reference_greedy.json").read_text())


@pytest.fixture(scope="module")
def prompt_ids(reference: dict) -> torch.Tensor:
    return torch.tensor([reference["prompt_ids"]])  # (1, T)


def test_config_follows_the_header_and_readme(model: LlamaForCausalLM) -> None:
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (512, 64, 172)
    assert (config.num_hidden_layers, config.num_attention_heads) == (5, 8)
    assert (config.num_key_value_heads, config.max_position_embeddings) == (4, 512)
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    assert config.rope_parameters["rope_theta"] == 10000.0
    assert config.rms_norm_eps == 1e-5


def test_model_is_in_eval_mode_with_classifier_tied_to_embeddings(
    model: LlamaForCausalLM,
) -> None:
    assert not model.training
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_last_prompt_logits_match_reference_top5(
    model: LlamaForCausalLM, reference: dict, prompt_ids: torch.Tensor
) -> None:
    with torch.no_grad():
        logits = model(prompt_ids).logits[0, -1]  # (V,)
    top = torch.topk(logits, 5)
    expected_ids, expected_logits = zip(*reference["last_prompt_logits_top5"], strict=True)
    assert top.indices.tolist() == list(expected_ids)
    torch.testing.assert_close(
        top.values.double(), torch.tensor(expected_logits, dtype=torch.float64), rtol=0, atol=1e-4
    )


def test_greedy_generate_with_kv_cache_reproduces_reference_ids(
    model: LlamaForCausalLM, reference: dict, prompt_ids: torch.Tensor
) -> None:
    expected = reference["greedy_ids_60"]  # prompt + 60 continuation ids
    output = model.generate(
        prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        max_new_tokens=len(expected) - prompt_ids.shape[1],
        do_sample=False,
        use_cache=True,
    )
    assert output[0].tolist() == expected


def test_step_by_step_decoding_through_the_cache_reproduces_reference_ids(
    model: LlamaForCausalLM, reference: dict, prompt_ids: torch.Tensor
) -> None:
    """Feed one token at a time through the KV cache, then check against one full forward.

    transformers 5 renamed `past_key_values` to `cache` (the old name warns until 5.40).
    """
    expected = reference["greedy_ids_60"]
    ids = prompt_ids[0].tolist()
    step_logits = []
    with torch.no_grad():
        out = model(prompt_ids, use_cache=True)
        while len(ids) < len(expected):
            step_logits.append(out.logits[0, -1])  # (V,)
            ids.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([ids[-1:]]), cache=out.cache, use_cache=True)
        full_logits = model(torch.tensor([ids]), use_cache=False).logits[0]  # (T, V)
    assert ids == expected
    assert out.cache.get_seq_length() == len(expected)
    prompt_len = prompt_ids.shape[1]
    torch.testing.assert_close(
        torch.stack(step_logits), full_logits[prompt_len - 1 : -1], rtol=0, atol=1e-4
    )


@pytest.mark.parametrize(
    ("keep_bytes", "message"),
    [
        (
            CHECKPOINT_BYTES - 4,
            f"implies {CHECKPOINT_BYTES} bytes, but the file has {CHECKPOINT_BYTES - 4} bytes",
        ),
        (10, "28-byte llama2.c header, but the file has 10 bytes"),
    ],
    ids=["one-float-short", "header-cut"],
)
def test_truncated_checkpoint_raises_value_error_naming_expected_and_actual_bytes(
    tmp_path: Path, keep_bytes: int, message: str
) -> None:
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(CHECKPOINT.read_bytes()[:keep_bytes])
    with pytest.raises(ValueError, match=re.escape(message)):
        read_llama2c_checkpoint(truncated)


def test_trailing_bytes_after_the_last_array_raise_value_error(tmp_path: Path) -> None:
    padded = tmp_path / "padded.bin"
    padded.write_bytes(CHECKPOINT.read_bytes() + bytes(4))
    with pytest.raises(ValueError, match=f"implies {CHECKPOINT_BYTES} bytes"):
        read_llama2c_checkpoint(padded)


def test_negative_vocab_size_reads_untied_classifier_after_rope_tables(
    tmp_path: Path, model: LlamaForCausalLM, prompt_ids: torch.Tensor
) -> None:
    """run.c's convention: vocab_size < 0 means a separate classifier follows the RoPE tables.

    The appended classifier is twice the embeddings, so every logit must double exactly
    (scaling by 2 commutes with float rounding).
    """
    raw = CHECKPOINT.read_bytes()
    header, body = np.frombuffer(raw[:28], dtype="<i4").copy(), raw[28:]  # 7 int32, float32s
    embeddings = np.frombuffer(body, dtype="<f4", count=512 * 64)  # (V, D), the first array
    header[5] = -header[5]  # vocab_size
    untied = tmp_path / "untied.bin"
    untied.write_bytes(header.tobytes() + body + (2 * embeddings).astype("<f4").tobytes())

    untied_model = load_llama2c_model(untied)

    assert not untied_model.config.tie_word_embeddings
    assert untied_model.config.vocab_size == 512
    torch.testing.assert_close(
        untied_model.lm_head.weight, 2 * untied_model.model.embed_tokens.weight, rtol=0, atol=0
    )
    with torch.no_grad():
        tied_logits = model(prompt_ids).logits  # (1, T, V)
        untied_logits = untied_model(prompt_ids).logits
    torch.testing.assert_close(untied_logits, 2 * tied_logits, rtol=0, atol=0)


def _first_stories(text: str, count: int) -> list[str]:
    """Split the dev file into stories; it marks no boundaries, so use "Once upon a time".

    Paragraphs and stories are both separated by blank lines, and the file opens mid-story,
    so text before the first "Once upon a time" is dropped.
    """
    stories: list[list[str]] = []
    for paragraph in text.split("\n\n"):
        if paragraph.startswith("Once upon a time"):
            if len(stories) == count:
                break
            stories.append([])
        if stories:
            stories[-1].append(paragraph)
    return ["\n\n".join(paragraphs) for paragraphs in stories]


def test_mean_next_token_nll_on_tinystories_matches_the_readme(model: LlamaForCausalLM) -> None:
    """The README measures about 1.36 nats/token; 20 stories leave sampling slack."""
    tokenizer_module = pytest.importorskip("del_server.models.llama2c_tokenizer")
    tokenizer = tokenizer_module.load_llama2c_tokenizer(MODEL_DIR / "tok512.bin")
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for story in _first_stories(TINYSTORIES.read_text(), 20):
            ids = [model.config.bos_token_id, *tokenizer.encode(story).ids]
            ids = torch.tensor([ids[: model.config.max_position_embeddings]])  # (1, T)
            logits = model(ids).logits[0, :-1]  # (T - 1, V)
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            total_nll += nll.item()
            total_tokens += ids.shape[1] - 1
    assert 1.0 < total_nll / total_tokens < 1.8
