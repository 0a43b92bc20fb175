"""The adapter bundle: PCA default, de-projection, soft-prompt choice, safetensors round trip,
and the calibrated levels adapter.json records (typed and checked when it loads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from del_server.adapter import Adapter, embedding_digest, pca_adapter
from del_server.calibration import CalibratedLevel, MeasuredUtility
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
COUNTS = {"tokens": 320, "content_tokens": 150, "prompts": 10}
COMMITTED = Path(__file__).resolve().parents[2] / "del_server" / "adapters"
LEVEL = {  # a level as train.calibrate records it
    "target_attack_rate": 0.1,
    "mu": 4.0,
    "epsilon_token": 25.0,
    "delta": 1e-5,
    "bits": 4,
    "attacks": {"likelihood": {**RATE, "exact_prompts": 0.0, **COUNTS}},
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
        calibration=[CalibratedLevel.from_dict(LEVEL, "test")],
        metadata=adapter.metadata,
    )
    restored = Adapter.load(original.save(tmp_path))
    torch.testing.assert_close(restored.down, original.down)
    torch.testing.assert_close(restored.soft_prompts[4.0], prompts[4.0])
    assert restored.calibration == original.calibration
    assert restored.metadata["embedding_sha256"] == embedding_digest(loaded.embeddings)


def saved_with_levels(directory: Path, adapter: Adapter, levels: list) -> Path:
    """`adapter` saved to `directory` with adapter.json's calibration replaced by `levels` as
    they are, as a hand edit or an older version would have written them."""
    adapter.save(directory)
    description = json.loads((directory / "adapter.json").read_text())
    (directory / "adapter.json").write_text(json.dumps({**description, "calibration": levels}))
    return directory


@pytest.mark.parametrize("name", ["stories260K", "minilm-sst2"])
def test_the_committed_adapters_save_back_byte_for_byte(tmp_path, name):
    Adapter.load(COMMITTED / name).save(tmp_path)
    for file in ("adapter.json", "adapter.safetensors", "reader.safetensors"):
        if (COMMITTED / name / file).exists():
            assert (tmp_path / file).read_bytes() == (COMMITTED / name / file).read_bytes(), file


def test_levels_load_as_typed_records(tmp_path, adapter):
    (level,) = Adapter.load(saved_with_levels(tmp_path, adapter, [LEVEL])).calibration
    assert isinstance(level, CalibratedLevel)
    assert (level.target_attack_rate, level.mu, level.bits) == (0.1, 4.0, 4)
    assert (level.strongest_attack, level.strongest.high, level.utility) == (
        "likelihood",
        0.09,
        None,
    )
    assert level.to_dict() == LEVEL


def test_loading_refuses_a_level_the_server_could_not_publish(tmp_path, adapter):
    stale = {k: v for k, v in LEVEL.items() if k not in ("attacks", "strongest_attack")}
    saved_with_levels(tmp_path, adapter, [LEVEL, stale])
    with pytest.raises(
        ValueError,
        match=r"adapter\.json: calibration\[1\] lacks attacks, strongest_attack.*del-server calibrate",
    ):
        Adapter.load(tmp_path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mu": -1.0}, "mu must be a finite number > 0"),
        ({"bits": 9}, r"bits must be an integer in 1\.\.8"),
        ({"delta": 1.0}, r"delta must be a number in \(0, 1\)"),
        ({"target_attack_rate": "0.1"}, "target_attack_rate must be a rate"),
        ({"prompts": 2.5}, "prompts must be an integer"),
        ({"strongest_attack": "learned"}, "the strongest attack has no measured rate"),
        ({"attacks": {"likelihood": RATE}}, "attacks.likelihood must have exactly the fields"),
        ({"calibrated_by": "hand"}, "unknown fields: calibrated_by"),
    ],
)
def test_loading_names_the_file_and_the_field_of_a_malformed_level(
    tmp_path, adapter, change, field
):
    saved_with_levels(tmp_path, adapter, [{**LEVEL, **change}])
    with pytest.raises(ValueError, match=rf"adapter\.json: calibration\[0\].*{field}"):
        Adapter.load(tmp_path)


def test_an_adapter_holds_typed_levels_only(adapter):
    with pytest.raises(TypeError, match="CalibratedLevel"):
        Adapter(adapter.down, adapter.up, adapter.mean, adapter.clip, calibration=[LEVEL])


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
    (loaded,) = Adapter.load(saved_with_levels(tmp_path, adapter, [level])).calibration
    assert loaded.utility == (None if utility is None else MeasuredUtility(**utility))
    assert loaded.to_dict() == level


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
    saved_with_levels(tmp_path, adapter, [level])
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
    utility = MeasuredUtility(**{**UTILITY, "value": value, "higher_is_better": higher_is_better})
    assert utility.better_than_nothing is better


@pytest.mark.parametrize(
    ("value", "higher_is_better", "better"),
    [(1.6, False, True), (1.68, False, False), (1.8, True, False), (1.85, True, True)],
)
def test_a_measured_margin_must_be_cleared_to_beat_nothing(value, higher_is_better, better):
    nothing = 1.7 if not higher_is_better else 1.75
    utility = MeasuredUtility(
        **{
            **UTILITY,
            "value": value,
            "nothing_sent": nothing,
            "higher_is_better": higher_is_better,
        },
        margin=0.05,
    )
    assert utility.better_than_nothing is better


def test_a_margin_round_trips_and_is_never_negative(tmp_path, adapter):
    measured = {**UTILITY, "value": 1.6, "margin": 0.01}
    (loaded,) = Adapter.load(
        saved_with_levels(tmp_path, adapter, [{**LEVEL, "utility": measured}])
    ).calibration
    assert loaded.utility.margin == 0.01
    assert loaded.utility.to_dict() == measured
    saved_with_levels(tmp_path, adapter, [{**LEVEL, "utility": {**measured, "margin": -0.01}}])
    with pytest.raises(ValueError, match="utility needs margin"):
        Adapter.load(tmp_path)


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
