"""The one optimisation loop every training stage shares.

Adam on a dict of named tensors, a progress bar with the running loss, and a checkpoint every
`checkpoint_every` steps: parameters, Adam moments and the data/noise generator's state in a
safetensors file (no pickle), the step and loss history in JSON beside it. `resume=True`
continues from the checkpoint as if the run had never stopped. Given a `HeldOut`, the loop
scores the parameters on held-out data before the first step and every `every` steps, and
ends on the best-scoring ones (early stopping: the last step is not always the best).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

LossFn = Callable[[torch.Generator], torch.Tensor]


@dataclass
class HeldOut:
    """Model selection: `score()` (lower is better, e.g. the loss on held-out rows under a
    fixed noise draw) of the current parameters, checked every `every` steps; `checks` holds
    (step, score) of every check once the loop has run, `best` the chosen one."""

    score: Callable[[], float]
    every: int = 50
    checks: list[tuple[int, float]] = field(default_factory=list)

    @property
    def best(self) -> tuple[int, float]:
        return min(self.checks, key=lambda check: check[1])

    def summary(self) -> dict:
        step, score = self.best
        return {"chosen_step": step, "held_out_score": score, "checks": len(self.checks)}


def checkpoint_in(out: Path, name: str) -> Path:
    """Where stage `name` of a run writing to `out` checkpoints: out/checkpoints, made on first
    use, so that a run refused at its input leaves no directory behind."""
    directory = out / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


def _file(checkpoint: Path, suffix: str) -> Path:
    """The checkpoint's file: its name plus `suffix` (a name like "level_mu3.56632" has a dot
    that with_suffix would take for a suffix, and two levels' files would collide)."""
    return checkpoint.with_name(checkpoint.name + suffix)


def _save(
    path: Path, params, optimizer, generator, step: int, losses: list[float], best, held_out
) -> None:
    tensors = {f"param.{name}": p.detach().contiguous() for name, p in params.items()}
    tensors |= {f"best.{name}": value.contiguous() for name, value in best.items()}
    for name, p in params.items():
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"adam.{name}.{key}"] = value.detach().reshape(-1).contiguous().clone()
    tensors["generator"] = generator.get_state()
    save_file(tensors, _file(path, ".safetensors"))
    checks = held_out.checks if held_out else []
    _file(path, ".json").write_text(json.dumps({"step": step, "losses": losses, "checks": checks}))


def _load(path: Path, params, optimizer, generator, best, held_out) -> tuple[int, list[float]]:
    tensors = load_file(_file(path, ".safetensors"))
    if held_out is not None:  # a run without checks ends on its last step, whatever was saved
        best |= {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"])
            state = {
                key.split(".")[-1]: value
                for key, value in tensors.items()
                if key.startswith(f"adam.{name}.")
            }
            if state:
                state["exp_avg"] = state["exp_avg"].view_as(p)
                state["exp_avg_sq"] = state["exp_avg_sq"].view_as(p)
                state["step"] = state["step"].reshape(())
                optimizer.state[p] = state
    generator.set_state(tensors["generator"])
    progress = json.loads(_file(path, ".json").read_text())
    if held_out is not None:
        held_out.checks = [tuple(check) for check in progress.get("checks", [])]
    return progress["step"], progress["losses"]


@torch.enable_grad()
def optimize(
    params: dict[str, torch.Tensor],
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float,
    seed: int,
    desc: str,
    checkpoint: Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 100,
    held_out: HeldOut | None = None,
) -> list[float]:
    """Minimise loss_fn over params for `steps` steps; returns the loss of every step. With
    `held_out`, params end as the best-scoring check's (its `checks` filled in).
    Gradients are on whatever the caller's mode: an attacker's prefix is trained lazily,
    possibly first asked for under no_grad."""
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start, losses, best = 0, [], {}
    if resume and checkpoint is not None and _file(checkpoint, ".json").exists():
        start, losses = _load(checkpoint, params, optimizer, generator, best, held_out)

    def check(step: int) -> None:
        with torch.no_grad():
            score = held_out.score()
        if not held_out.checks or score < held_out.best[1]:
            best.update({name: p.detach().clone() for name, p in params.items()})
        held_out.checks.append((step, score))

    if held_out is not None:
        if start == 0:
            held_out.checks = []
        if not held_out.checks:  # fresh, or a checkpoint from a run without held-out checks
            check(start)
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, unit="step", leave=False)
    for step in bar:
        loss = loss_fn(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        if held_out is not None and ((step + 1) % held_out.every == 0 or step + 1 == steps):
            check(step + 1)
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            _save(checkpoint, params, optimizer, generator, step + 1, losses, best, held_out)
    with torch.no_grad():
        for name, value in best.items():
            params[name].copy_(value)
    for p in params.values():
        p.requires_grad_(False)
    return losses


def loss_summary(losses: list[float]) -> dict:
    """Steps, and the mean loss of the first and last windows: for training reports."""
    if not losses:
        return {"steps": 0}
    window = max(1, min(50, len(losses) // 5))
    return {
        "steps": len(losses),
        "first_mean": sum(losses[:window]) / window,
        "last_mean": sum(losses[-window:]) / window,
        "window": window,
    }
