"""`del-server eval --resume`: a stopped evaluation continues from what it finished, and only
for the same configuration on the same adapter."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from del_server.eval.checkpoint import Checkpoints


def counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_a_record_is_computed_once_and_reused_when_resuming(tmp_path):
    compute, calls = counting({"loss": 1.5})
    assert Checkpoints(tmp_path, {"seed": 0}, resume=False).record("utility/a", compute) == {
        "loss": 1.5
    }
    resumed = Checkpoints(tmp_path, {"seed": 0}, resume=True)
    assert resumed.record("utility/a", compute) == {"loss": 1.5}
    assert len(calls) == 1


def test_without_resume_every_unit_is_measured_again(tmp_path):
    compute, calls = counting({"loss": 1.5})
    Checkpoints(tmp_path, {"seed": 0}, resume=False).record("a", compute)
    Checkpoints(tmp_path, {"seed": 0}, resume=False).record("a", compute)
    assert len(calls) == 2


def test_a_run_that_starts_over_leaves_no_unit_for_a_later_resume(tmp_path):
    """Else a run of another configuration, stopped early, would resume into the first run's
    leftovers under its own fingerprint."""
    Checkpoints(tmp_path, {"seed": 0}, resume=False).record("a", lambda: {"seed": 0})
    Checkpoints(tmp_path, {"seed": 1}, resume=False)  # stopped before it reached "a"
    compute, calls = counting({"seed": 1})
    assert Checkpoints(tmp_path, {"seed": 1}, resume=True).record("a", compute) == {"seed": 1}
    assert len(calls) == 1


def test_tensors_round_trip_exactly(tmp_path):
    tensors = {"soft_prompt": torch.randn(4, 3), "path.gate": torch.tensor(0.25)}
    Checkpoints(tmp_path, {}, resume=False).tensors("soft/a", lambda: tensors)
    loaded = Checkpoints(tmp_path, {}, resume=True).tensors("soft/a", pytest.fail)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)


def test_resuming_checkpoints_of_another_configuration_is_refused(tmp_path):
    Checkpoints(tmp_path, {"seed": 0, "particles": 8}, resume=False).record("a", dict)
    with pytest.raises(SystemExit, match="particles, seed differ"):
        Checkpoints(tmp_path, {"seed": 1, "particles": 16}, resume=True)


def test_a_record_half_written_by_a_killed_run_is_never_read(tmp_path):
    Checkpoints(tmp_path, {}, resume=False).record("a", lambda: {"x": 1})
    assert not list(tmp_path.rglob("*.partial"))


def test_a_resumed_evaluation_takes_each_baselines_level_from_its_checkpoint(
    tmp_path, smoke_context
):
    """The slowest unit (each baseline level is verified with every attack) is not redone."""
    from dataclasses import replace

    from del_server.eval.baselines import matched_baselines
    from del_server.eval.context import EvalContext

    first = matched_baselines(smoke_context)
    config = replace(smoke_context.config, out=tmp_path)
    shutil.copytree(smoke_context.checkpoints.directory, tmp_path / "checkpoints")
    method, level = first[0]
    stored = (
        tmp_path
        / "checkpoints"
        / "baseline-levels"
        / f"{method.family}@{level.target_attack_rate:g}.json"
    )
    record = json.loads(stored.read_text())
    stored.write_text(json.dumps({**record, "mu": level.mu / 2}))

    resumed = matched_baselines(EvalContext.open(config, resume=True))
    assert resumed[0][1].mu == level.mu / 2
    assert resumed[0][0].mechanism.mu() == pytest.approx(level.mu / 2)
    assert [lv.mu for _, lv in resumed[1:]] == [lv.mu for _, lv in first[1:]]


def test_a_resumed_run_knows_when_the_first_run_began(tmp_path):
    first = Checkpoints(tmp_path, {}, resume=False).started
    assert Checkpoints(tmp_path, {}, resume=True).started == first
    assert Checkpoints(tmp_path, {}, resume=False).started >= first  # starting over
