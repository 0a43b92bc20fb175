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
    train: Labelled
    dev: Labelled
    label_names: tuple[str, ...]

    def describe(self) -> dict:
        return {
            "train_sentences": len(self.train),
            "dev_sentences": len(self.dev),
            "labels": list(self.label_names),
            "rule": "train.tsv: training and the attacker's language; dev.tsv: calibration, "
            "audit (its tokens) and accuracy",
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


def _labelled(texts: list[str], labels: list[int], tokenizer: Tokenizer) -> Labelled:
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    kept = [(e.ids, label) for e, label in zip(encodings, labels, strict=True) if e.ids]
    return Labelled(
        tuple(torch.tensor(ids, dtype=torch.long) for ids, _ in kept),
        torch.tensor([label for _, label in kept], dtype=torch.long),
    )


def load_labelled(directory: str | Path, tokenizer: Tokenizer) -> LabelledData:
    directory = Path(directory)
    texts, labels = read_tsv(directory / "train.tsv")
    dev = _labelled(*read_tsv(directory / "dev.tsv"), tokenizer)
    count = max(labels + dev.labels.tolist()) + 1
    names = TASK_LABELS.get(directory.name, tuple(str(i) for i in range(count)))
    if len(names) != count:
        raise InputError(f"{directory}: {count} labels in the files, {len(names)} names")
    return LabelledData(
        train=_labelled(texts, labels, tokenizer),
        dev=dev,
        label_names=names,
    )
