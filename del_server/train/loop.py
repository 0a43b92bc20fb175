"""The one optimisation loop every training stage shares.

Adam on a dict of named tensors, a progress bar with the running loss, and a checkpoint every
`checkpoint_every` steps: parameters, Adam moments and the data/noise generator's state in a
safetensors file (no pickle), the step and loss history in JSON beside it. `resume=True`
continues from the checkpoint as if the run had never stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

LossFn = Callable[[torch.Generator], torch.Tensor]


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


def _save(path: Path, params, optimizer, generator, step: int, losses: list[float]) -> None:
    tensors = {f"param.{name}": p.detach().contiguous() for name, p in params.items()}
    for name, p in params.items():
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"adam.{name}.{key}"] = value.detach().reshape(-1).contiguous().clone()
    tensors["generator"] = generator.get_state()
    save_file(tensors, _file(path, ".safetensors"))
    _file(path, ".json").write_text(json.dumps({"step": step, "losses": losses}))


def _load(path: Path, params, optimizer, generator) -> tuple[int, list[float]]:
    tensors = load_file(_file(path, ".safetensors"))
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
) -> list[float]:
    """Minimise loss_fn over params for `steps` steps; returns the loss of every step.
    Gradients are on whatever the caller's mode: an attacker's prefix is trained lazily,
    possibly first asked for under no_grad."""
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start, losses = 0, []
    if resume and checkpoint is not None and _file(checkpoint, ".json").exists():
        start, losses = _load(checkpoint, params, optimizer, generator)
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, unit="step", leave=False)
    for step in bar:
        loss = loss_fn(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            _save(checkpoint, params, optimizer, generator, step + 1, losses)
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
