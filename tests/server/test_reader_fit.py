"""The particle reader's blend and its fitted λ (train/reader.py): exact arithmetic on known
per-window losses."""

from __future__ import annotations

import math

import pytest
import torch

from del_server.train.reader import WEIGHTS, blend, fit_weight


def test_the_blend_is_the_two_component_mixture_exactly():
    alone, mixture = torch.tensor([10.0, 3.0, 40.0]), torch.tensor([12.0, 1.0, 30.0])
    for weight in (0.0, 0.3, 1.0):
        expected = [
            -math.log(weight * math.exp(-a) + (1 - weight) * math.exp(-m))
            for a, m in zip(alone.tolist(), mixture.tolist(), strict=True)
        ]
        assert blend(alone, mixture, weight).tolist() == pytest.approx(expected, rel=1e-6)


def test_the_blend_costs_at_most_log_one_over_lambda_over_either_component():
    generator = torch.Generator().manual_seed(0)
    alone, mixture = 50 * torch.rand(2, 100, generator=generator)
    for weight in (0.1, 0.5, 0.9):
        blended = blend(alone, mixture, weight)
        assert (blended <= alone - math.log(weight) + 1e-5).all()
        assert (blended <= mixture - math.log1p(-weight) + 1e-5).all()


def test_lambda_is_the_grids_least_total_loss():
    generator = torch.Generator().manual_seed(1)
    alone = 40 + torch.randn(64, generator=generator)
    mixture = alone + 6 * torch.randn(64, generator=generator)  # sometimes far better or worse
    weight = fit_weight(alone, mixture)
    totals = {w: blend(alone, mixture, w).sum().item() for w in WEIGHTS}
    assert totals[weight] == min(totals.values())
    assert 0 < weight < 1  # neither component alone is best
    assert fit_weight(alone, alone - 5) == 0.0  # the particles always better: never ignore
    assert fit_weight(alone, alone + 5) == 1.0  # always worse: always ignore the prompt
