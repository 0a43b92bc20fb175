"""The evaluation's privacy measurements on the real model: which prompts each role uses, the
reference rows, and the baselines matched to DEL's levels by DEL's own calibration."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from del_client.accountant import gdp_epsilon
from del_server.attacks.suite import ATTACKS
from del_server.eval.baselines import matched_baselines
from del_server.eval.privacy import attack_method, noise_seed, reference_rows
from del_server.train.data import read_documents


@pytest.fixture(scope="module")
def matched(smoke_context):
    return matched_baselines(smoke_context)


def test_each_role_gets_its_own_prompts(smoke_context):
    ctx, config = smoke_context, smoke_context.config
    validation = ctx.split.validation
    calibration, attacked, ood = ctx.calibration_prompts(), ctx.attack_prompts(), ctx.ood_prompts()
    assert calibration.shape == (config.calibration_prompts, ctx.prompt_tokens)
    assert attacked.shape == ood.shape == (config.attack_prompts, ctx.prompt_tokens)
    np.testing.assert_array_equal(calibration, validation.prompts[: len(calibration)].numpy())
    np.testing.assert_array_equal(attacked, validation.continuations[: len(attacked)].numpy())
    first_window = ctx.loaded.tokenizer.decode(ood[0].tolist())
    assert read_documents(config.ood_data)[0].startswith(first_window)


def test_calibration_prompts_default_to_those_the_levels_were_calibrated_on(smoke_context):
    ctx = smoke_context
    bigger = replace(ctx, config=replace(ctx.config, calibration_prompts=None))
    assert len(bigger.calibration_prompts()) == max(lv.prompts for lv in ctx.adapter.calibration)


def test_references_read_raw_embeddings_entirely_and_guess_blind_at_the_priors_best(
    smoke_context,
):
    prompts = smoke_context.attack_prompts()
    clean, nothing = reference_rows(smoke_context, prompts)
    assert (clean.strongest_attack, clean.strongest) == ("exact_lookup", 1.0)
    blind = smoke_context.attacker.prior_alone(prompts)
    assert set(nothing.attacks) == {*blind, "most_frequent"}
    assert nothing.strongest == max(r["rate"] for r in nothing.attacks.values())
    assert 0 < nothing.strongest < 0.5


def test_baselines_are_matched_to_every_level_by_dels_rule(smoke_context, matched):
    """Every attack's 95 % upper bound under the level's target on the calibration prompts,
    and the method measured at the calibrated μ reproduces what calibration verified."""
    targets = sorted(lv.target_attack_rate for lv in smoke_context.adapter.calibration)
    for family in ("del_full", "gaussian"):
        levels = [lv for m, lv in matched if m.family == family]
        assert [lv.target_attack_rate for lv in levels] == targets
    for method, level in matched:
        assert method.mechanism.mu() == pytest.approx(level.mu)
        assert max(r.high for r in level.attacks.values()) < level.target_attack_rate
        assert set(level.attacks) == set(ATTACKS)
    gaussian, level = next((m, lv) for m, lv in matched if m.family == "gaussian")
    assert level.epsilon_token == pytest.approx(gdp_epsilon(level.delta, mu=level.mu))
    again = smoke_context.attacker.attack(
        gaussian.adapter,
        gaussian.mechanism,
        smoke_context.calibration_prompts(),
        seed=smoke_context.config.seed,
    )
    assert again == level.attacks


def test_a_row_carries_every_attack_and_names_the_strongest(smoke_context, matched):
    method = matched[0][0]
    row = attack_method(smoke_context, method, smoke_context.attack_prompts())
    assert set(row.attacks) == set(ATTACKS)
    best = row.attacks[row.strongest_attack]
    assert row.strongest == best["rate"] == max(r["rate"] for r in row.attacks.values())
    assert row.strongest_high == best["high"]
    assert 0 < row.epsilon_token < row.epsilon_prompt
    assert noise_seed(smoke_context) != smoke_context.config.seed
