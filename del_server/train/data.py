"""Training text: files -> documents -> a deterministic split -> fixed-size token windows.

Documents are blocks separated by blank lines (TinyStories paragraphs, WikiText lines, ...).
The split is contiguous, not shuffled: the last `validation_fraction` of the documents is
held out, so text that continues across neighbouring documents (a story's paragraphs) rarely
straddles the split. Each window is `prompt_tokens` of prompt followed by
`continuation_tokens` of continuation, cut back to back from each split's token stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..errors import InputError


def read_documents(source: str | Path, flag: str = "--data") -> list[str]:
    """Blank-line separated blocks of a text file, or of every *.txt under a directory (sorted);
    `flag` is the option that named `source`, for the error an operator reads."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{flag} {source}: no such file or directory")
    files = sorted(source.rglob("*.txt")) if source.is_dir() else [source]
    if not files:
        raise InputError(f"{flag} {source}: no text files")
    documents = []
    for path in files:
        blocks = path.read_text(encoding="utf-8").split("\n\n")
        documents += [" ".join(block.split()) for block in blocks if block.strip()]
    return documents


@dataclass(frozen=True)
class Windows:
    prompts: torch.Tensor  # (N, prompt_tokens) token ids
    continuations: torch.Tensor  # (N, continuation_tokens) token ids

    def __len__(self) -> int:
        return self.prompts.shape[0]

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self), (size,), generator=generator)
        return self.prompts[index], self.continuations[index]

    def head(self, count: int) -> Windows:
        return self.part(0, count)

    def first(self, count: int, *, asked_by: str, remedy: str) -> Windows:
        """The first `count` windows, or a refusal naming what asked for them (`asked_by`) and
        how to get there (`remedy`): a run on fewer would report figures on less than asked."""
        if len(self) < count:
            raise InputError(
                f"{asked_by}: {count} windows, but the held-out text holds {len(self)}; {remedy}"
            )
        return self.head(count)

    def part(self, start: int, count: int) -> Windows:
        """Up to `count` windows from `start` on."""
        stop = start + count
        return Windows(self.prompts[start:stop], self.continuations[start:stop])


@dataclass(frozen=True)
class Split:
    train: Windows
    validation: Windows
    documents: int
    validation_documents: int

    def describe(self) -> dict:
        return {
            "documents": self.documents,
            "validation_documents": self.validation_documents,
            "train_windows": len(self.train),
            "validation_windows": len(self.validation),
            "rule": "contiguous split: the last documents are held out",
        }


def _windows(
    source: str | Path,
    documents: list[str],
    tokenizer: Tokenizer,
    prompt: int,
    continuation: int,
) -> Windows:
    stream: list[int] = []
    for encoding in tokenizer.encode_batch(documents, add_special_tokens=False):
        stream += encoding.ids
    size = prompt + continuation
    count = len(stream) // size
    if count == 0:
        raise InputError(f"--data {source}: not enough text for one window of {size} tokens")
    ids = torch.tensor(stream[: count * size], dtype=torch.long).view(count, size)
    return Windows(ids[:, :prompt].contiguous(), ids[:, prompt:].contiguous())


def load_split(
    source: str | Path,
    tokenizer: Tokenizer,
    *,
    prompt_tokens: int = 32,
    continuation_tokens: int = 32,
    validation_fraction: float = 0.1,
) -> Split:
    documents = read_documents(source)
    held_out = max(1, round(len(documents) * validation_fraction))
    if held_out >= len(documents):
        raise InputError(f"--data {source}: too few documents ({len(documents)}) to hold some out")
    train_docs, validation_docs = documents[:-held_out], documents[-held_out:]
    return Split(
        train=_windows(source, train_docs, tokenizer, prompt_tokens, continuation_tokens),
        validation=_windows(source, validation_docs, tokenizer, prompt_tokens, continuation_tokens),
        documents=len(documents),
        validation_documents=held_out,
    )
