"""Labelled sentences for classification, tokenized as the client tokenizes them.

A task's directory holds `train.tsv` and `dev.tsv` with a header line and rows of
`text<TAB>label` (integer labels 0..L−1; GLUE's SST-2 as ../shared/data/sst2 has it).
train.tsv is what the head trains on and the attacker's language. dev.tsv is the text a user
sends: whole sentences the training text does not contain in any form. The levels are
calibrated and audited on its tokens (never its labels) and the accuracy is measured on it.
Calibrating on held-out training rows instead measured the wrong text: SST-2's training rows
are phrases of one another (a held-out row's 6-grams mostly recur in the rest), shorter than a
review sentence and poorer in the frequent words an attacker guesses; on dev sentences the
same attacks recovered more (5.2 % against 3.9 % at the 5 % level).

Model selection (early stopping) needs text held out like dev's, without touching dev: a few
long training rows are held out as sentences, and every training row that is a phrase of one
of them (a contiguous run of its words, down to single words) leaves the training set with
them, so no held-out sentence is seen in pieces. All of train.tsv stays the attacker's language.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from ..errors import InputError

# Names of the labels of the tasks whose files give integers only.
TASK_LABELS = {"sst2": ("negative", "positive")}
# A held-out row has at least this many words: a sentence, or most of one (SST-2's training
# rows are phrases of every length; its dev sentences average 19 words).
HELD_OUT_MIN_WORDS = 12


@dataclass(frozen=True)
class Labelled:
    ids: tuple[torch.Tensor, ...]  # each sentence's token ids, no template tokens
    labels: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(
        self, size: int, generator: torch.Generator
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        index = torch.randint(len(self), (size,), generator=generator)
        return [self.ids[i] for i in index.tolist()], self.labels[index]

    @property
    def majority(self) -> float:
        """The most frequent label's share: the accuracy of sending nothing."""
        return float(torch.bincount(self.labels).max()) / len(self)

    def head(self, count: int) -> Labelled:
        return Labelled(self.ids[:count], self.labels[:count])

    def stream(self) -> np.ndarray:
        """Every sentence's ids back to back: public text for the attacker's bigram prior."""
        return torch.cat(list(self.ids)).numpy()

    def windows(self, count: int | None, length: int, *, asked_by: str = "asked for") -> np.ndarray:
        """(count, length) consecutive tokens of the sentences back to back: prompts of one
        length for the attacks (calibration measures token recovery, not labels); count None:
        as many as the text holds. `asked_by`: what set `count`, for the operator's error."""
        stream = self.stream()
        available = len(stream) // length
        count = available if count is None else count
        if available < count:
            raise InputError(
                f"{asked_by}: {count} windows of {length} tokens, but the dev sentences hold "
                f"{available}"
            )
        return stream[: count * length].reshape(count, length)


@dataclass(frozen=True)
class LabelledData:
    train: Labelled  # what the stages fit on
    held_out: Labelled  # sentences of train.tsv held out for model selection
    dev: Labelled
    label_names: tuple[str, ...]
    language: np.ndarray  # every row of train.tsv back to back: the attacker's public text

    def describe(self) -> dict:
        return {
            "train_sentences": len(self.train),
            "held_out_sentences": len(self.held_out),
            "dev_sentences": len(self.dev),
            "labels": list(self.label_names),
            "rule": "train.tsv: training, held-out sentences for model selection (with their "
            "phrases out of training), and all of it the attacker's language; dev.tsv: "
            "calibration, audit (its tokens) and accuracy",
        }


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    if not path.is_file():
        raise InputError(
            f"--data {path.parent}: no {path.name} (a task directory holds train.tsv and dev.tsv)"
        )
    texts, labels = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
        text, separator, label = line.rpartition("\t")
        if not separator or not label.strip().isdigit():
            raise InputError(f"{path}:{number}: expected text<TAB>integer label, got {line!r}")
        texts.append(text.strip())
        labels.append(int(label))
    return texts, labels


def _encoded(texts: list[str], tokenizer: Tokenizer) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def _labelled(encoded: list[list[int]], labels: list[int]) -> Labelled:
    """The rows with any tokens (an empty one has nothing to send)."""
    kept = [(ids, label) for ids, label in zip(encoded, labels, strict=True) if ids]
    return Labelled(
        tuple(torch.tensor(ids, dtype=torch.long) for ids, _ in kept),
        torch.tensor([label for _, label in kept], dtype=torch.long),
    )


def _phrases(sentence: str) -> set[str]:
    words = sentence.split()
    return {
        " ".join(words[start:end])
        for start in range(len(words))
        for end in range(start + 1, len(words) + 1)
    }


def held_out_rows(texts: list[str], count: int, seed: int) -> tuple[list[int], list[int]]:
    """-> (held-out rows, training rows): `count` rows of at least HELD_OUT_MIN_WORDS words
    drawn with `seed`, and the rows that are no phrase of any of them."""
    long = [i for i, text in enumerate(texts) if len(text.split()) >= HELD_OUT_MIN_WORDS]
    if len(long) < count:
        raise InputError(
            f"--held-out {count}: train.tsv has {len(long)} rows of "
            f"{HELD_OUT_MIN_WORDS} or more words"
        )
    held = sorted(np.random.default_rng(seed).choice(long, size=count, replace=False).tolist())
    phrases = set().union(*(_phrases(texts[i]) for i in held))
    fit = [i for i, text in enumerate(texts) if " ".join(text.split()) not in phrases]
    if not fit:
        raise InputError(f"--held-out {count}: no training row is left once they are held out")
    return held, fit


def load_labelled(
    directory: str | Path, tokenizer: Tokenizer, *, held_out: int = 0, seed: int = 0
) -> LabelledData:
    """The task's rows; `held_out` training sentences (drawn with `seed`) set aside."""
    directory = Path(directory)
    texts, labels = read_tsv(directory / "train.tsv")
    dev_texts, dev_labels = read_tsv(directory / "dev.tsv")
    dev = _labelled(_encoded(dev_texts, tokenizer), dev_labels)
    count = max(labels + dev.labels.tolist()) + 1
    names = TASK_LABELS.get(directory.name, tuple(str(i) for i in range(count)))
    if len(names) != count:
        raise InputError(f"{directory}: {count} labels in the files, {len(names)} names")
    held, fit = held_out_rows(texts, held_out, seed)
    encoded = _encoded(texts, tokenizer)

    def rows(index: list[int]) -> Labelled:
        return _labelled([encoded[i] for i in index], [labels[i] for i in index])

    return LabelledData(
        train=rows(fit),
        held_out=rows(held),
        dev=dev,
        label_names=names,
        language=_labelled(encoded, labels).stream(),
    )
