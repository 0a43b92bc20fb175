"""Every attack, run on the same received symbols of the same prompts: what calibration keeps
under a level's target and what the evaluation reports.

The attacker is the server (DESIGN §2): it knows the mechanism and its parameters, the client
table, the model and the language (public in-domain text). Attacks, weakest knowledge first:

    nearest_neighbour  de-project the decoded symbols, take the closest embedding (the paper's)
    likelihood         each token's exact likelihood alone (a uniform prior)
    learned            an inversion network trained on public text: likelihood + token frequency
    bigram_marginal    forward-backward with a bigram prior: each token's posterior argmax
    bigram_viterbi     the most likely whole prompt under the same model
    trigram_marginal   forward-backward with a trigram prior, over the bigram's best candidates
    lm_beam            beam search with the provider's own LLM as the prior
    lm_filter          the same prior, each token's marginal from a particle filter
    lm_smoother        the same particles' weighted final paths (lm_filter's twin: one run)

Calibration (train.calibrate) bisects over the fast ones and verifies with all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from transformers import PreTrainedModel

from del_client.manifest import ATTACKS_IN_WORDS

from ..adapter import Adapter
from ..train.data import Windows
from ..train.defaults import DEFAULT_PARTICLES, DEFAULT_PREFIX_STEPS, DEFAULT_TRIGRAM_KEEP
from .beam import DEFAULT_WIDTH, beam_guesses
from .learned import learned_guesses, train_learned_attacker
from .mechanisms import Mechanism
from .particle import particle_guesses, text_prefix
from .recovery import Recovery, content_mask, recovery
from .sequence import DEFAULT_KEEP, BigramPrior, Lattice, marginal_guesses, viterbi_guesses
from .tokenwise import client_table, log_likelihood_matrix, nearest_neighbour_guesses
from .trigram import TrigramPrior, trigram_marginal_guesses

ATTACKS = tuple(ATTACKS_IN_WORDS)  # the names the manifest's AttackRate carries
PARTICLE_ATTACKS = ("lm_filter", "lm_smoother")  # one particle run gives both
LM_ATTACKS = ("lm_beam", *PARTICLE_ATTACKS)  # those that need a causal LM
# those that can guess blind
PRIOR_ONLY = ("bigram_marginal", "bigram_viterbi", "trigram_marginal", *LM_ATTACKS)
Progress = Callable[[Iterable[int]], Iterable[int]]  # wraps an iteration to show how far it got
PROMPTS_PER_CHUNK = 32  # bounds the (prompts, M, M) transition tensors and the beam's batch


def without_lm(attacks: Iterable[str]) -> tuple[str, ...]:
    """Those of `attacks` an encoder can run: the LM attacks need a causal LM."""
    return tuple(attack for attack in attacks if attack not in LM_ATTACKS)


@dataclass(frozen=True)
class AttackOptions:
    beam_width: int = DEFAULT_WIDTH
    particles: int = DEFAULT_PARTICLES
    prefix_steps: int = DEFAULT_PREFIX_STEPS  # training of the LM attacks' mid-text prefix
    keep: int = DEFAULT_KEEP  # candidates per position for the sequence attacks
    trigram_keep: int = DEFAULT_TRIGRAM_KEEP  # of those, the trigram's (M² pair states)
    learned_steps: int = 400
    learned_batch: int = 512

    def strength(self) -> str:
        """The settings a sampled or pruned attack grows stronger with, as a level's record
        names them: a label holds against this attacker, not against every one."""
        return (
            f"the LLM particle attacks at {self.particles} particles, the beam {self.beam_width} "
            f"wide, the trigram over {self.trigram_keep} candidates"
        )


@dataclass(frozen=True, eq=False)
class Attacker:
    """What the server knows besides the symbols: the model and public text of the domain."""

    embeddings: torch.Tensor  # (V, d) the model's input embeddings
    model: PreTrainedModel | None  # a causal LM, the LM attacks' prior; None: no such attack
    bos_id: int | None
    public_ids: np.ndarray  # a stream of public in-domain token ids
    options: AttackOptions = field(default_factory=AttackOptions)

    @classmethod
    def of_model(
        cls, model: PreTrainedModel, bos_id: int | None, public: Windows, options: AttackOptions
    ) -> Attacker:
        """The server as attacker: `model`, and `public` windows in reading order (each
        prompt followed by its continuation) as its in-domain text."""
        stream = torch.cat([public.prompts, public.continuations], dim=1).reshape(-1).numpy()
        return cls(_embeddings(model), model, bos_id, stream, options)

    @classmethod
    def of_encoder(
        cls, model: PreTrainedModel, public_ids: np.ndarray, options: AttackOptions
    ) -> Attacker:
        """The server as attacker with an encoder: no causal LM, so no LM attacks; `public_ids`
        its in-domain text as one stream of token ids."""
        return cls(_embeddings(model), None, None, public_ids, options)

    @property
    def attacks(self) -> tuple[str, ...]:
        """Every attack this attacker can run: the LM attacks need a causal LM (an encoder has
        none)."""
        return ATTACKS if self.model is not None else without_lm(ATTACKS)

    @property
    def vocab(self) -> int:
        return self.embeddings.shape[0]

    @cached_property
    def prior(self) -> BigramPrior:
        return BigramPrior.fit(self.public_ids, self.vocab)

    @cached_property
    def trigram(self) -> TrigramPrior:
        return TrigramPrior.fit(self.public_ids, self.prior)

    @cached_property
    def prefix(self) -> torch.Tensor:
        """The particle attacks' mid-text prefix, trained once on the public text."""
        return text_prefix(
            self.model, self.bos_id, self.public_ids, steps=self.options.prefix_steps
        )

    def attack(
        self,
        adapter: Adapter,
        mechanism: Mechanism,
        prompts: np.ndarray,  # (P, T) token ids
        *,
        seed: int,
        attacks: Iterable[str] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Recovery]:
        """Privatize `prompts` once (seeded measurement noise) and run each attack on them
        (None: every attack this attacker can run); `progress` wraps the prompt chunks the
        sequence attacks walk (a tqdm bar, say)."""
        attacks = self._checked(self.attacks if attacks is None else attacks)
        table = client_table(adapter, self.embeddings)
        symbols = mechanism.privatize(table[prompts.reshape(-1)], np.random.default_rng(seed))
        symbols = symbols.reshape(*prompts.shape, -1)
        guesses: dict[str, np.ndarray] = {}
        if "nearest_neighbour" in attacks:
            decoded = mechanism.decode(symbols.reshape(-1, symbols.shape[-1]))
            guesses["nearest_neighbour"] = nearest_neighbour_guesses(
                adapter, self.embeddings, decoded
            ).reshape(prompts.shape)
        if "learned" in attacks:
            network = train_learned_attacker(
                mechanism.privatize,
                table,
                self.public_ids,
                alphabet=mechanism.alphabet,
                steps=self.options.learned_steps,
                batch=self.options.learned_batch,
                seed=seed,
            )
            guesses["learned"] = learned_guesses(network, symbols)
        contextual = [a for a in attacks if a in ("likelihood", *PRIOR_ONLY)]
        if contextual:
            log_table = mechanism.log_likelihood(table)
            guesses |= self._contextual(
                contextual,
                lambda chunk: log_likelihood_matrix(log_table, chunk),
                symbols,
                progress,
            )
        return self._scored(guesses, prompts)

    def prior_alone(self, prompts: np.ndarray) -> dict[str, Recovery]:
        """What the sequence attacks recover with no symbols at all (a flat likelihood): the
        floor under which no level's attack rate can be pushed. Computed once per prompt set
        (calibration asks for it at every target and for every mechanism)."""
        key = hashlib.sha256(np.ascontiguousarray(prompts).tobytes()).hexdigest()
        if key not in self._blind:
            self._blind[key] = self._prior_alone(prompts)
        return self._blind[key]

    @cached_property
    def _blind(self) -> dict[str, dict[str, Recovery]]:
        return {}

    def _prior_alone(self, prompts: np.ndarray) -> dict[str, Recovery]:

        def flat(chunk: np.ndarray) -> torch.Tensor:
            return torch.zeros(*chunk.shape[:2], self.vocab)

        placeholder = np.zeros((*prompts.shape, 1), dtype=np.uint8)
        blind = [a for a in PRIOR_ONLY if a in self.attacks]
        return self._scored(self._contextual(blind, flat, placeholder, None), prompts)

    def _contextual(self, attacks, likelihood_of, symbols, progress) -> dict[str, np.ndarray]:
        """The likelihood attack and the sequence attacks, prompt chunk by chunk."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in attacks}
        chunks = range(0, len(symbols), PROMPTS_PER_CHUNK)
        for start in progress(chunks) if progress else chunks:
            log_likelihood = likelihood_of(symbols[start : start + PROMPTS_PER_CHUNK])
            if "likelihood" in attacks:
                parts["likelihood"].append(log_likelihood.argmax(dim=-1).numpy())
            if not set(attacks) & set(PRIOR_ONLY):
                continue
            lattice = Lattice.build(log_likelihood, self.prior, keep=self.options.keep)
            if "bigram_marginal" in attacks:
                parts["bigram_marginal"].append(marginal_guesses(lattice))
            if "bigram_viterbi" in attacks:
                parts["bigram_viterbi"].append(viterbi_guesses(lattice))
            if "trigram_marginal" in attacks:
                parts["trigram_marginal"].append(
                    trigram_marginal_guesses(lattice, self.trigram, keep=self.options.trigram_keep)
                )
            if "lm_beam" in attacks:
                parts["lm_beam"].append(
                    beam_guesses(self.model, self.bos_id, lattice, width=self.options.beam_width)
                )
            if set(PARTICLE_ATTACKS) & set(attacks):
                found = particle_guesses(
                    self.model,
                    self.bos_id,
                    self.prefix,
                    lattice,
                    particles=self.options.particles,
                    seed=start,  # reproducible, chunk by chunk
                )
                for name, guessed in (("lm_filter", found.filter), ("lm_smoother", found.smoother)):
                    if name in attacks:
                        parts[name].append(guessed)
        return {name: np.concatenate(chunks_of) for name, chunks_of in parts.items()}

    def _checked(self, attacks: Iterable[str]) -> tuple[str, ...]:
        attacks = tuple(attacks)
        unknown = sorted(set(attacks) - set(self.attacks))
        if unknown:
            raise ValueError(f"attacks {unknown} cannot run here; these can: {self.attacks}")
        return attacks

    def _scored(self, guesses: dict[str, np.ndarray], prompts: np.ndarray) -> dict[str, Recovery]:
        content = content_mask(prompts, self.public_ids, self.vocab)
        return {
            name: recovery(guesses[name], prompts, content) for name in ATTACKS if name in guesses
        }


def _embeddings(model: PreTrainedModel) -> torch.Tensor:
    return model.get_input_embeddings().weight.detach().float()


def strongest(results: dict[str, Recovery]) -> tuple[str, Recovery]:
    """The attack that recovered the most tokens."""
    name = max(results, key=lambda n: results[n].rate)
    return name, results[name]
