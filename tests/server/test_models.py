"""Model loading: one LoadedModel from llama2.c files or a Hugging Face directory."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from del_server.models import detect_format, load_model


@pytest.fixture(scope="module")
def stories(shared_dir):
    return load_model(str(shared_dir / "models" / "stories260K"))


def test_llama2c_directory_and_file_are_detected(shared_dir):
    directory = shared_dir / "models" / "stories260K"
    assert detect_format(str(directory)) == "llama2c"
    assert detect_format(str(directory / "stories260K.bin")) == "llama2c"
    assert detect_format("some-org/some-model") == "hf"


def test_unknown_format_is_refused(shared_dir):
    with pytest.raises(ValueError, match="unknown model format"):
        load_model(str(shared_dir), format="gguf")


def test_a_hugging_face_directory_loads_through_the_auto_classes(tmp_path, stories, shared_dir):
    """Save stories260K as an HF model + fast tokenizer, reload it, and decode greedily."""
    stories.model.save_pretrained(tmp_path)
    PreTrainedTokenizerFast(
        tokenizer_object=stories.tokenizer, bos_token="\n<s>\n", eos_token="\n</s>\n"
    ).save_pretrained(tmp_path)
    hf = load_model(str(tmp_path))
    reference = json.loads((shared_dir / "models/stories260K/reference_greedy.json").read_text())
    ids = [hf.bos_id, *hf.tokenizer.encode(reference["prompt"], add_special_tokens=False).ids]
    assert ids == reference["prompt_ids"]
    out = hf.model.generate(torch.tensor([ids]), max_new_tokens=60, do_sample=False)
    assert out[0].tolist() == reference["greedy_ids_60"]
    assert (hf.bos_id, hf.eos_id) == (1, 2)
