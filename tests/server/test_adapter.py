"""The adapter bundle: PCA default, de-projection, soft-prompt choice, safetensors round trip."""

from __future__ import annotations

import json

import pytest
import torch

from del_server.adapter import Adapter, better_than_nothing, embedding_digest, pca_adapter
from del_server.models import load_model


@pytest.fixture(scope="module")
def loaded(shared_dir):
    return load_model(str(shared_dir / "models" / "stories260K"))


@pytest.fixture(scope="module")
def adapter(loaded):
    return pca_adapter(loaded.embeddings, dim=16)


def test_pca_projection_has_orthonormal_rows_and_its_transpose_as_inverse(adapter):
    torch.testing.assert_close(adapter.down @ adapter.up, torch.eye(16), atol=1e-5, rtol=0)


def test_full_rank_pca_reconstructs_the_embedding_table(loaded):
    full = pca_adapter(loaded.embeddings, dim=64)
    restored = full.deproject(full.project(loaded.embeddings.detach()))
    torch.testing.assert_close(restored, loaded.embeddings.detach(), atol=1e-4, rtol=0)


def test_clip_is_the_stated_quantile_of_projected_coordinates(loaded, adapter):
    z = adapter.project(loaded.embeddings.detach()).abs().flatten()
    assert (z <= adapter.clip).float().mean().item() == pytest.approx(0.98, abs=1e-3)
    assert "quantile 0.98" in adapter.metadata["clip_rule"]


def test_norm_bound_caps_deprojected_vectors(adapter):
    bounded = Adapter(adapter.down, adapter.up, adapter.mean, adapter.clip, norm_bound=0.5)
    h = bounded.deproject(torch.randn(10, 16) * 100)
    assert h.norm(dim=-1).max().item() <= 0.5 + 1e-5


def test_soft_prompt_choice_is_exact_or_the_nearest_more_private_level(adapter):
    prompts = {mu: torch.full((2, 64), mu) for mu in (2.0, 10.0)}
    with_prompts = Adapter(
        adapter.down, adapter.up, adapter.mean, adapter.clip, soft_prompts=prompts
    )
    assert with_prompts.soft_prompt_for(10.0)[0] == 10.0
    assert with_prompts.soft_prompt_for(5.0)[0] == 2.0
    assert with_prompts.soft_prompt_for(50.0)[0] == 10.0
    assert with_prompts.soft_prompt_for(1.0) is None


RATE = {"rate": 0.08, "low": 0.07, "high": 0.09, "content_rate": 0.05, "half_prompts": 0.0}
LEVEL = {  # a level as train.calibrate records it
    "target_attack_rate": 0.1,
    "mu": 4.0,
    "epsilon_token": 25.0,
    "delta": 1e-5,
    "bits": 4,
    "attacks": {"likelihood": {**RATE, "exact_prompts": 0.0}},
    "strongest_attack": "likelihood",
    "prior_alone_rate": 0.03,
    "measured_on": "held-out prompts",
    "tokens": 320,
    "prompts": 10,
}


def test_adapter_round_trips_through_safetensors_and_json(tmp_path, adapter, loaded):
    prompts = {4.0: torch.randn(3, 64)}
    original = Adapter(
        adapter.down,
        adapter.up,
        adapter.mean,
        adapter.clip,
        soft_prompts=prompts,
        calibration=[LEVEL],
        metadata=adapter.metadata,
    )
    restored = Adapter.load(original.save(tmp_path))
    torch.testing.assert_close(restored.down, original.down)
    torch.testing.assert_close(restored.soft_prompts[4.0], prompts[4.0])
    assert restored.calibration == original.calibration
    assert restored.metadata["embedding_sha256"] == embedding_digest(loaded.embeddings)


def test_loading_refuses_a_level_the_server_could_not_publish(tmp_path, adapter):
    stale = {k: v for k, v in LEVEL.items() if k not in ("attacks", "strongest_attack")}
    Adapter(adapter.down, adapter.up, adapter.mean, adapter.clip, calibration=[stale]).save(
        tmp_path
    )
    with pytest.raises(ValueError, match=r"lacks attacks, strongest_attack.*del-server calibrate"):
        Adapter.load(tmp_path)


UTILITY = {  # a level's utility as train.pipeline's evaluation records it
    "metric": "held-out continuation loss (nats/token)",
    "value": 2.9,
    "nothing_sent": 1.7,
    "higher_is_better": False,
    "measured_on": "256 held-out windows",
}


@pytest.mark.parametrize("utility", [None, UTILITY], ids=["without utility", "with utility"])
def test_a_level_loads_with_or_without_its_utility(tmp_path, adapter, utility):
    level = LEVEL if utility is None else {**LEVEL, "utility": utility}
    Adapter(adapter.down, adapter.up, adapter.mean, adapter.clip, calibration=[level]).save(
        tmp_path
    )
    assert Adapter.load(tmp_path).calibration == [level]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"value": float("nan")}, "value"),
        ({"nothing_sent": "1.7"}, "nothing_sent"),
        ({"higher_is_better": 0}, "higher_is_better"),
        ({"metric": None}, "metric"),
    ],
)
def test_loading_refuses_a_malformed_utility(tmp_path, adapter, change, message):
    level = {**LEVEL, "utility": {**UTILITY, **change}}
    Adapter(adapter.down, adapter.up, adapter.mean, adapter.clip, calibration=[level]).save(
        tmp_path
    )
    with pytest.raises(ValueError, match=f"utility needs {message}"):
        Adapter.load(tmp_path)


@pytest.mark.parametrize(
    ("value", "higher_is_better", "better"),
    [
        (1.6, False, True),
        (1.7, False, False),
        (2.9, False, False),
        (1.8, True, True),
        (1.6, True, False),
    ],
)
def test_better_than_nothing_follows_the_metric_and_is_strict(value, higher_is_better, better):
    utility = {**UTILITY, "value": value, "higher_is_better": higher_is_better}
    assert better_than_nothing(utility) is better


def test_loading_refuses_edited_tensors(tmp_path, adapter):
    adapter.save(tmp_path)
    description = json.loads((tmp_path / "adapter.json").read_text())
    description["tensors_sha256"] = "0" * 64
    (tmp_path / "adapter.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="digest"):
        Adapter.load(tmp_path)


def test_mismatched_shapes_are_refused(adapter):
    with pytest.raises(ValueError, match="shapes disagree"):
        Adapter(adapter.down, adapter.up[:, :8], adapter.mean, adapter.clip)
