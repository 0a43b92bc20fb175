"""The evaluation in order, each stage timed, into out/eval.json, out/EVAL.md and the plots.

methods        DEL's levels from the adapter; baselines matched to them; their soft prompts
privacy        every attack on every private method, exact ε per token and per prompt
out of domain  every attack on DEL's levels, on text of another domain
utility        loss and coherence per method over noise seeds
communication  real gRPC requests at each level and raw; computed sizes; symbol entropy
speed          codec and end-to-end benchmarks; latency samples through gRPC
report         findings, eval.json, plots, EVAL.md

Every unit of the first four stages is checkpointed as it finishes (eval.checkpoint), so
`del-server eval --resume` continues a stopped run.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..paths import recorded
from ..settings import Settings
from ..threaded import serve_in_thread
from .baselines import all_methods, matched_baselines, soft_prompt_steps
from .coherence import ENCODER
from .communication import communication_stage
from .config import EvalConfig
from .context import EvalContext
from .findings import comparisons, privacy_findings, summary_findings, utility_findings
from .plots import draw_all
from .privacy import out_of_domain_stage, privacy_stage
from .report import SCHEMA, write_markdown
from .speed import speed_stage
from .utility import utility_stage


@contextmanager
def serving(config: EvalConfig) -> Iterator[str]:
    """A real server with the trained adapter (and the raw baseline on) -> its target."""
    settings = Settings(
        model=config.model,
        adapter=config.adapter,
        port=0,
        metrics_port=-1,
        enable_raw=True,
        max_running=max(config.concurrency),
        max_waiting=64,
        max_new_tokens=max(256, config.bench_new_tokens),
    )
    with serve_in_thread(settings) as server:
        yield server.target


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[f"{name}_s"] = time.perf_counter() - start

    def total(self) -> dict[str, float]:
        return {**self.timings, "total_s": time.perf_counter() - self._started}


def run(config: EvalConfig, *, command: str = "del-server eval", resume: bool = False) -> dict:
    """The whole evaluation; `resume`: reuse what a stopped run of the same configuration
    finished (OUT/checkpoints, see eval.checkpoint). Stage timings then count only this run."""
    timer = _Timer()
    torch.set_num_threads(config.threads)
    ctx = EvalContext.open(config, resume=resume)  # refuses what cannot run before OUT exists
    config.out.mkdir(parents=True, exist_ok=True)
    with timer.stage("methods"):
        matched = matched_baselines(ctx)
        methods = all_methods(ctx, [method for method, _ in matched])
    with timer.stage("privacy"):
        privacy = privacy_stage(ctx, methods)
    with timer.stage("out_of_domain"):
        out_of_domain = out_of_domain_stage(ctx, methods)
    with timer.stage("utility"):
        measured = utility_stage(ctx, methods)
    with (
        timer.stage("communication_speed"),
        serving(config) as target,
        tempfile.TemporaryDirectory(prefix="del-eval-bundles-") as cache_dir,
    ):
        communication = communication_stage(ctx, methods, target, Path(cache_dir))
        speed = speed_stage(ctx, target, Path(cache_dir))
    targets = [level.target_attack_rate for level in ctx.adapter.calibration]
    report = {
        "schema": SCHEMA,
        "command": command,
        "config": recorded(config),
        "setup": {**ctx.describe(), "calibration_prompts": len(ctx.calibration_prompts())},
        "methods": [m.describe() for m in methods],
        "baseline_levels": {method.key: level.to_dict() for method, level in matched},
        "privacy": privacy,
        "out_of_domain": out_of_domain,
        "utility": {
            "loss_windows": config.loss_windows,
            "coherence_windows": config.coherence_windows,
            "seeds": list(config.seeds),
            "reader_seeds": config.reader_seeds,
            "encoder": ENCODER,
            "baseline_soft_prompt_steps": soft_prompt_steps(ctx),
            "rows": [m.to_dict() for m in measured],
            "samples": {m.method.key: m.sample for m in measured},
        },
        "comparisons": comparisons(measured, targets),
        "communication": communication,
        "speed": speed,
        "timings": {
            **timer.total(),
            **({"since_first_run_s": time.time() - ctx.checkpoints.started} if resume else {}),
        },
    }
    render(report, config.out)
    return report


def render(report: dict, out: Path) -> None:
    """Findings, figures, eval.json and EVAL.md from the measurements in `report` alone, so a
    change of wording or plotting needs no new measurement (`del-server eval --render-only`)."""
    out.mkdir(parents=True, exist_ok=True)
    levels = report["setup"]["adapter"]["levels"]
    report["findings"] = {
        "summary": summary_findings(report),
        "utility": utility_findings(report["comparisons"], levels),
        "privacy": privacy_findings(report),
    }
    report["plots"] = draw_all(report, out)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "EVAL.md")
