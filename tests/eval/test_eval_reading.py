"""The evaluation measures DEL as an adapter with a particle reader serves it, against sending
nothing through the same reader, and says which wins."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from del_server.adapter import Adapter
from del_server.eval.context import EvalContext, reader_selection
from del_server.eval.findings import comparisons, served_summary, utility_findings
from del_server.eval.methods import Method
from del_server.eval.privacy import seen_by_attacker
from del_server.eval.reading import read, reader_methods
from del_server.eval.utility import Measured, utility_stage
from del_server.settings import DEFAULT_ADAPTER
from del_server.train.reader import ReaderBench, prefix_nlls


@pytest.fixture(scope="module")
def reader_context(smoke_context):
    assert smoke_context.adapter.reader is not None  # conftest trains the small adapter with one
    return smoke_context


def test_an_adapter_without_a_reader_adds_no_reader_methods(smoke_context):
    unread = replace(smoke_context, adapter=replace(smoke_context.adapter, reader=None))
    assert reader_methods(unread) == []


def test_nothing_sent_and_every_level_are_read_and_none_is_attacked_again(reader_context):
    methods = reader_methods(reader_context)
    levels = [level.target_attack_rate for level in reader_context.adapter.calibration]
    assert [m.key for m in methods] == ["no_prompt+reader"] + [f"del+reader@{t:g}" for t in levels]
    assert all(m.server_side for m in methods)
    assert seen_by_attacker(methods) == []


def test_a_reader_that_always_ignores_the_prompt_serves_its_prefix_alone(reader_context):
    ctx = reader_context
    method = reader_methods(ctx)[-1]
    windows = ctx.split.validation.head(4)
    found = read(ctx, method, 1.0, windows, len(windows), seed=0)
    prefix = ctx.adapter.reader.prefix
    assert torch.allclose(found.nlls, prefix_nlls(ctx.lm, windows, prefix))
    from del_server.eval.coherence import greedy_continuations

    with torch.no_grad():
        alone = ctx.lm.prefix(None, len(windows), prefix)
    expected = greedy_continuations(
        ctx.lm, alone, windows.continuations.shape[1], ctx.loaded.eos_id
    )
    assert found.continuations == expected


def test_a_reader_that_reads_every_prompt_continues_after_decoded_tokens(reader_context):
    ctx = reader_context
    method = reader_methods(ctx)[-1]
    windows = ctx.split.validation.head(4)
    read_always = read(ctx, method, 0.0, windows, len(windows), seed=0)
    ignored = read(ctx, method, 1.0, windows, len(windows), seed=0)
    assert read_always.continuations != ignored.continuations
    # The served NLL is a mixture's: no window is scored as if the prompt were ignored.
    assert not torch.allclose(read_always.nlls, ignored.nlls)


@pytest.fixture
def one_thread():
    """Workers run one torch thread; this process must too for their particles to match."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_readers_measured_in_worker_processes_are_those_measured_here(
    reader_context, one_thread
):
    ctx = reader_context
    mechanism = ctx.level_mechanism(ctx.adapter.calibration[-1])
    bench = ReaderBench(
        ctx.lm,
        ctx.front_end,
        ctx.adapter.reader.prefix,
        8,
        0,
        reader_selection(ctx.split, ctx.config),
        ctx.split.validation.head(8),
    )
    here = [bench.measure(None), bench.measure(mechanism)]
    for worker, local in zip(bench.measure_each([None, mechanism], jobs=2), here, strict=True):
        assert worker.to_dict() == local.to_dict()
        assert torch.equal(worker.served, local.served)


def test_eval_jobs_measure_in_worker_processes_what_one_process_measures(
    reader_context, tmp_path, one_thread
):
    """Each worker opens the evaluation itself from its configuration; the records it hands
    back are checkpointed here, as a unit measured here is."""
    measured = {}
    for jobs in (1, 2):
        config = replace(reader_context.config, out=tmp_path / f"jobs{jobs}", jobs=jobs)
        ctx = EvalContext.open(config)
        methods = [*reader_methods(ctx)[:2], Method("no_prompt")]
        measured[jobs] = utility_stage(ctx, methods)
        stored = sorted(p.stem for p in (config.out / "checkpoints" / "utility").glob("*.json"))
        assert stored == sorted(m.key for m in methods)
    for worker, local in zip(measured[2], measured[1], strict=True):
        assert worker.record() == local.record()


def _measured(key_family: str, loss: np.ndarray, coherence: np.ndarray, **fields) -> Measured:
    method = Method(key_family.split("+")[0], **fields)
    return Measured(
        method=method,
        loss={"mean": float(loss.mean()), "std": 0.0, "ci95": 0.0, "seeds": 1},
        perplexity={"mean": float(np.exp(loss.mean())), "std": 0.0, "ci95": 0.0, "seeds": 1},
        coherence={"mean": float(coherence.mean()), "std": 0.0, "ci95": 0.0, "seeds": 1},
        loss_windows=loss,
        coherence_windows=coherence,
        sample=("", ""),
    )


def test_the_served_level_is_credited_only_for_beating_both_ways_of_sending_nothing():
    committed = Adapter.load(DEFAULT_ADAPTER)
    target = 0.2
    rng = np.random.default_rng(0)
    base = rng.normal(1.7, 0.3, 200)
    coherence = rng.uniform(0.3, 0.5, 200)
    at_level = {"target_attack_rate": target}
    measured = [
        _measured("no_prompt+soft", base, coherence, soft_prompt=torch.zeros(1, 1)),
        _measured("no_prompt+reader", base - 0.05, coherence, reader=committed.reader),
        _measured("del+soft", base + 0.1, coherence, soft_prompt=torch.zeros(1, 1), **at_level),
        _measured("del+reader", base - 0.06, coherence + 0.01, reader=committed.reader, **at_level),
    ]
    rows = comparisons(measured, [target])
    served = {r["against"]: r for r in rows if r["method"] == f"del+reader@{target:g}"}
    assert set(served) == {f"del+soft@{target:g}", "no_prompt+reader", "no_prompt+soft"}
    # 0.06 below the soft prompt alone, but only 0.01 below the blind reader: paired over
    # windows that is resolved too (the differences are constant), so both are "lower".
    assert served["no_prompt+soft"]["loss_difference"]["verdict"] == "lower"
    assert served["no_prompt+reader"]["loss_difference"]["verdict"] == "lower"
    level = {"target_attack_rate": target, "mu": 5.0, "epsilon_token": 30.0}
    lines = utility_findings(rows, [level])
    assert any("as served (read by the particle reader)" in line for line in lines)
    assert served_summary(rows, [target]) == (
        "As served, read by the particle reader, DEL beats sending nothing (both the soft prompt "
        f"alone and the same reader with no symbols) in loss at 1 of 1 levels ({target:.0%}) and "
        f"in coherence at 1 ({target:.0%})."
    )
    # Beating the soft prompt alone is not enough when the blind reader does as well.
    measured[3] = _measured(
        "del+reader",
        base - 0.05 + rng.normal(0, 0.3, 200),
        coherence,
        reader=committed.reader,
        **at_level,
    )
    rows = comparisons(measured, [target])
    assert "in loss at 0 of 1 levels (none)" in served_summary(rows, [target])
