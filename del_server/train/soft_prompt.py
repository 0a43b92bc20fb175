"""Stage 3: one soft prompt per privacy level, the paper's central idea.

m vectors of size d prepended to every request at that level, trained with the LLM and the
projection frozen; with the posterior front-end (front_end.py), that level's front-end
parameters (temperature, gate, "unknown" vector) are trained with it. Noise is applied exactly where it is at inference, on the user's prompt
tokens only, freshly drawn at every step; the loss is on the clean continuation. (The paper
trains with noise on every token and tests with noise on the prompt only; not copied.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer

from del_client.mechanism import PrivacySpec

from ..adapter import Adapter
from ..attacks.mechanisms import Binomial
from ..errors import InputError
from ..front_end import PosteriorFrontEnd
from .data import Windows
from .loop import optimize
from .noise import symbols
from .objective import FrozenLM, private_prompt

INIT_TEXT = "Once upon a time, there was a little girl. She liked to play with her friends."


def initial_prompt(
    lm: FrozenLM, tokenizer: Tokenizer, length: int, text: str = INIT_TEXT
) -> torch.Tensor:
    """(length, d): the embeddings of a short in-domain text, repeated if too short."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    ids = (ids * (length // len(ids) + 1))[:length]
    return lm.embed(torch.tensor(ids)).detach().clone()


# prompt ids (B, Tp) and the step's generator -> (B, Tp, d) what the LLM sees, or None
PromptFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor | None]


def level_prompt(
    lm: FrozenLM,
    adapter: Adapter,
    spec: PrivacySpec,
    front_end: PosteriorFrontEnd | None = None,
    parameters: dict[str, torch.Tensor] | None = None,
) -> PromptFn:
    """The prompt path of a DEL privacy level as the server serves it: fresh mechanism noise
    on the prompt tokens, read through W_d (`front_end` None) or the posterior front-end with
    `parameters` (None: the plain posterior mean)."""
    if front_end is None:
        return lambda ids, generator: private_prompt(lm, adapter, ids, spec, generator)
    mechanism = Binomial(spec)

    def posterior(ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        sent = symbols(adapter.project(lm.embed(ids)), spec, generator)
        inputs = front_end.inputs(sent.to(torch.uint8).cpu().numpy(), mechanism, parameters)
        return inputs.to(lm.device)

    return posterior


def nothing_sent(ids: torch.Tensor, generator: torch.Generator) -> None:
    """The prompt path of sending nothing: the LLM continues from the soft prompt and BOS alone
    (perfect privacy, no communication), what every level must beat to be worth its ε."""
    return None


def levels_training(adapter: Adapter, steps: int | None = None) -> dict:
    """The length and steps of the adapter's own soft prompts (`steps`: a configured number
    instead), so that a soft prompt compared with its levels' (nothing sent, a baseline
    mechanism) had the same chance to recover utility."""
    if not adapter.soft_prompts:
        raise InputError("the adapter has no soft prompts: train them first")
    steps = steps or adapter.metadata.get("soft_prompt_steps")
    if not steps:
        raise InputError(
            "the adapter does not record its soft-prompt steps: pass --soft-prompt-steps"
        )
    return {"length": next(iter(adapter.soft_prompts.values())).shape[0], "steps": int(steps)}


def train_soft_prompt(
    prompt_fn: PromptFn,
    lm: FrozenLM,
    train: Windows,
    tokenizer: Tokenizer,
    *,
    desc: str,
    length: int = 8,
    steps: int = 400,
    batch: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
    checkpoint: Path | None = None,
    resume: bool = False,
    path_parameters: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """-> ((length, d) soft prompt, per-step losses) for any prompt path: a DEL level
    (`level_prompt`), or a baseline (no prompt, other mechanisms) that the evaluation then
    compares with exactly the same training. `path_parameters`, the tensors `prompt_fn` reads
    (a posterior front-end's), are trained with the soft prompt, in place."""
    trained = path_parameters or {}
    params = {"soft_prompt": initial_prompt(lm, tokenizer, length)}
    params |= {f"path.{name}": tensor for name, tensor in trained.items()}

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        prompts, continuations = train.batch(batch, generator)
        # The projection is frozen: only the soft prompt and the path's parameters learn.
        with torch.set_grad_enabled(bool(trained)):
            prompt = prompt_fn(prompts, generator)
        return lm.continuation_loss(prompt, continuations, params["soft_prompt"])

    losses = optimize(
        params,
        loss_fn,
        steps=steps,
        lr=lr,
        seed=seed,
        checkpoint=checkpoint,
        resume=resume,
        desc=desc,
    )
    return params["soft_prompt"].detach().clone(), losses
