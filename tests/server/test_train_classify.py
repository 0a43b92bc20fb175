"""The classification training pipeline, on a few real SST-2 rows and the real MiniLM: every
stage runs, what it trains is what the server serves, and the data rules hold."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from del_server.adapter import Adapter
from del_server.attacks.recovery import Recovery
from del_server.attacks.suite import LM_ATTACKS
from del_server.calibration import CalibratedLevel
from del_server.train.classification import pipeline
from del_server.train.labelled import HELD_OUT_MIN_WORDS, held_out_rows, read_tsv


@pytest.fixture(scope="module")
def task_dir(shared_dir, tmp_path_factory) -> Path:
    """A small task directory named like SST-2: its first training and dev rows."""
    directory = tmp_path_factory.mktemp("tasks") / "sst2"
    directory.mkdir()
    for name, rows in (("train.tsv", 120), ("dev.tsv", 24)):
        lines = (shared_dir / "data" / "sst2" / name).read_text().splitlines()
        (directory / name).write_text("\n".join(lines[: rows + 1]) + "\n")
    return directory


@pytest.fixture(scope="module")
def bench(task_dir, tmp_path_factory) -> pipeline.ClassifyBench:
    config = pipeline.ClassifyConfig(
        model="all-MiniLM-L6-v2",
        data=str(task_dir),
        out=tmp_path_factory.mktemp("adapter"),
        projection_steps=2,
        front_end_steps=2,
        level_steps=2,
        batch=4,
        held_out=3,
        check_every=1,
        eval_seeds=(0,),
    )
    return pipeline.ClassifyBench.open(config)


def test_the_labelled_data_is_split_as_documented(bench):
    data = bench.data
    assert (len(data.held_out), len(data.dev)) == (3, 24)
    assert len(data.train) <= 120 - 3  # the held-out sentences' phrases left with them
    assert data.label_names == ("negative", "positive")
    assert all(ids.dtype == torch.long and len(ids) > 0 for ids in data.train.ids)
    windows = data.dev.windows(3, 4)
    assert windows.shape == (3, 4)
    assert (windows.reshape(-1) == data.dev.stream()[:12]).all()


def test_no_training_row_is_a_phrase_of_a_held_out_sentence(bench, task_dir):
    """Model selection scores sentences the stages never saw, not even in pieces; the
    attacker's language keeps every row."""
    texts, _ = read_tsv(task_dir / "train.tsv")
    held, fit = held_out_rows(texts, 3, seed=bench.config.seed)
    assert all(len(texts[i].split()) >= HELD_OUT_MIN_WORDS for i in held)
    held_text = [" " + " ".join(texts[i].split()) + " " for i in held]
    for i in fit:
        assert not any(f" {' '.join(texts[i].split())} " in sentence for sentence in held_text)
    assert len(bench.data.train) == len(fit)
    every = [bench.loaded.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    assert bench.data.language.tolist() == [token for ids in every for token in ids]


def test_a_held_out_sentence_takes_its_phrases_out_of_training_and_nothing_else():
    sentence = "the film is a charming and often affecting journey of a young man"
    texts = [
        sentence,
        "a charming and often affecting",  # a phrase of it
        "charming",  # one word of it
        "a young woman",  # shares words, is no phrase of it
        "charming films",  # not on its word boundaries
    ]
    held, fit = held_out_rows(texts, 1, seed=0)
    assert held == [0]  # the only row of 12 or more words
    assert fit == [3, 4]


def test_more_held_out_sentences_than_the_text_has_are_refused(task_dir):
    texts, _ = read_tsv(task_dir / "train.tsv")
    with pytest.raises(
        ValueError, match=r"^--held-out 500: train.tsv has \d+ rows of 12 or more words$"
    ):
        held_out_rows(texts, 500, seed=0)


def test_the_levels_are_calibrated_on_dev_sentences_never_on_the_attackers_text(bench):
    """A user's sentence is not in the attacker's language: the training rows are."""
    small = dataclasses.replace(
        bench, config=dataclasses.replace(bench.config, calibration_prompts=5)
    )
    prompts = pipeline.calibration_prompts(small, "asked")
    assert (prompts.reshape(-1) == bench.data.dev.stream()[: prompts.size]).all()
    assert np.array_equal(pipeline.attacker(bench).public_ids, bench.data.language)


def test_the_tokens_carry_no_template_tokens(bench):
    """[CLS] and [SEP] are the server's to add, clean: the client's tokens never hold them."""
    every = torch.cat(list(bench.data.train.ids))
    assert not (every == bench.path.cls_id).any()
    assert not (every == bench.path.sep_id).any()


def test_a_malformed_row_is_refused_with_its_line(tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\na fine film\tpositive\n")
    with pytest.raises(ValueError, match=r"train\.tsv:2: expected text<TAB>integer label"):
        read_tsv(tmp_path / "train.tsv")


def test_dev_sentences_too_few_for_the_calibration_are_refused_naming_what_asked(bench):
    available = len(bench.data.dev.stream()) // bench.config.calibration_length
    with pytest.raises(
        ValueError,
        match=(
            f"^--calibration-prompts: 250 windows of 16 tokens, but the dev sentences hold {available}$"
        ),
    ):
        pipeline.calibration_prompts(bench, "--calibration-prompts")


def test_the_calibration_attacks_with_what_an_encoder_leaves_as_strong_as_asked(bench):
    stronger = dataclasses.replace(bench.config, trigram_keep=512)
    attacker = pipeline.attacker(dataclasses.replace(bench, config=stronger))
    assert attacker.options.trigram_keep == 512
    assert "trigram_marginal" in attacker.attacks
    assert not set(attacker.attacks) & set(LM_ATTACKS)


def test_every_stage_trains_what_the_server_serves(bench):
    """Projection, levels (calibration stubbed: the attacks have tests of their own) and clean
    head; the adapter saves, loads, and classifies through the served path alike."""
    adapter = pipeline.projection_stage(bench)
    assert adapter.clip == 1.0
    assert len(bench.losses["projection"]) == 2
    assert bench.selection["projection"]["checks"] == 3  # before the first step, after each
    adapter = pipeline.front_end_stage(bench, adapter)
    assert len(bench.losses["front_end"]) == 2
    measured = Recovery(0.05, 0.04, 0.06, 0.01, 0.0, 0.0, tokens=64, content_tokens=20, prompts=4)
    level = CalibratedLevel(
        target_attack_rate=0.1,
        mu=3.0,
        epsilon_token=3.5,
        delta=1e-5,
        bits=bench.config.bits,
        attacks={"likelihood": measured},
        strongest_attack="likelihood",
        prior_alone_rate=0.02,
        measured_on="a stub: the attacks are tested elsewhere",
        tokens=64,
        prompts=4,
    )
    adapter = dataclasses.replace(adapter, calibration=[level])
    adapter = pipeline.level_stage(bench, adapter)
    adapter = pipeline.clean_head_stage(bench, adapter)
    assert set(adapter.task.heads) == set(adapter.soft_prompts) == {3.0}
    assert adapter.task.clean_head is not None
    adapter.save(bench.config.out)
    loaded = Adapter.load(bench.config.out)
    assert loaded.task.labels == ("negative", "positive")
    for mu in (3.0,):
        assert torch.equal(loaded.task.heads[mu].weight, adapter.task.heads[mu].weight)
        assert torch.equal(loaded.soft_prompts[mu], adapter.soft_prompts[mu])
    accuracy = pipeline.level_accuracy(bench, loaded, 3.0)
    assert len(accuracy) == 1
    assert 0.0 <= accuracy[0] <= 1.0
