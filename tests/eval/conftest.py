"""A small adapter trained here by the real pipeline (stories260K on TinyStories, every attack
in its calibration, a posterior front-end and a particle reader of 8 particles), so the evaluation's tests neither wait for nor depend on the committed
adapter, and an evaluation context over it with the smoke preset."""

from __future__ import annotations

from pathlib import Path

import pytest

TINYSTORIES = "data/tinystories/tinystories_val_head_dev.txt"
TARGETS = (0.1, 0.3)  # well above what the attacker guesses blind, even on 8 prompts


@pytest.fixture(scope="session")
def tinystories(shared_dir) -> Path:
    return shared_dir / TINYSTORIES


@pytest.fixture(scope="session")
def small_adapter(tmp_path_factory, tinystories, stories260k) -> Path:
    from del_server.train.pipeline import TrainConfig, run_all

    out = tmp_path_factory.mktemp("adapter")
    config = TrainConfig(
        model=str(stories260k),
        data=str(tinystories),
        out=out,
        projection_steps=20,
        soft_prompt_steps=4,
        targets=TARGETS,
        calibration_prompts=8,
        inversion_steps=20,
        beam_width=4,
        particles=8,
        prefix_steps=10,
        eval_windows=4,
        eval_seeds=(0,),
        # Served as the committed adapter is: through the posterior front-end and the reader.
        front_end="posterior",
        reader_particles=8,
    )
    run_all(config)
    return out


@pytest.fixture(scope="session")
def smoke_context(tmp_path_factory, small_adapter, tinystories, stories260k):
    from del_server.eval.config import preset
    from del_server.eval.context import EvalContext

    config = preset(
        "smoke",
        model=str(stories260k),
        adapter=str(small_adapter),
        data=str(tinystories),
        out=tmp_path_factory.mktemp("eval-context"),
    )
    return EvalContext.open(config)
