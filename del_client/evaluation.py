"""`del-client evaluate`: a labelled file classified through a server, and how often it was right.

    report = asyncio.run(evaluate_file(ClientConfig("localhost:50052"), Path("dev.tsv"), level=0.10))
    print(report.accuracy, report.interval_95)   # the served level on your own held-out data

A provider's report says what a level's accuracy was on its own dev set; this measures it on
the real path (this client's noise, the wire, the server's batching) and on data the provider
never saw. The file is `text<TAB>label` per line, the label a name the server's manifest lists
or its index there (GLUE's SST-2 files: 0 negative, 1 positive); a first line whose label is
neither is a header. Every row is privatized afresh, as a user's prompt would be; no privacy
budget is charged, since the rows are evaluation data, not the user's prompts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scipy.stats import binomtest
from tqdm import tqdm

from .aio import AsyncClient
from .classification import ClassificationResult
from .config import ClientConfig
from .errors import DELError, RequestOptionError, ServerError
from .manifest import LevelUtility

MAX_CONCURRENCY = 256


@dataclass(frozen=True)
class LabelledRow:
    line: int  # in the file, from 1
    text: str
    label: str  # as written: a label's name or its index


def read_labelled(path: Path) -> list[LabelledRow]:
    """Every non-blank `text<TAB>label` line of `path` (a header line included: see resolve)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RequestOptionError(f"cannot read {path}: {exc}") from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        text, separator, label = line.rpartition("\t")
        if not separator or not text.strip():
            raise RequestOptionError(f"{path}:{number}: expected text<TAB>label, got {line!r}")
        rows.append(LabelledRow(number, text.strip(), label.strip()))
    return rows


def _label_name(written: str, labels: Sequence[str]) -> str | None:
    if written in labels:
        return written
    if written.isdigit() and int(written) < len(labels):
        return labels[int(written)]
    return None


def resolve(rows: list[LabelledRow], labels: Sequence[str], path: Path) -> list[tuple[str, str]]:
    """(text, label name) per row; a first row whose label is no label is a header, skipped."""
    if not rows:
        raise RequestOptionError(f"{path}: no labelled rows")
    header = rows[0] if _label_name(rows[0].label, labels) is None else None
    rows = rows[1:] if header else rows
    if not rows:
        raise RequestOptionError(
            f"{path}: no labelled rows after the header line {header.text!r}<TAB>{header.label!r} "
            f"(labels: {', '.join(labels)} or their index)"
        )
    resolved = []
    for row in rows:
        name = _label_name(row.label, labels)
        if name is None:
            raise RequestOptionError(
                f"{path}:{row.line}: label {row.label!r} is neither one of the server's labels "
                f"({', '.join(labels)}) nor an index 0..{len(labels) - 1} of one"
            )
        resolved.append((row.text, name))
    return resolved


@dataclass(frozen=True)
class EvaluationReport:
    target: str
    file: str
    level_id: str  # the level every answer was served at ("" for raw)
    private: bool  # False: the raw mechanism, no privacy (ε and μ None)
    mu_token: float | None
    epsilon_token: float | None  # exact, per token, at `delta`
    delta: float | None
    bits_per_token: float  # payload bits per prompt token, over every answered row
    rows: int  # classified and answered
    correct: int
    accuracy: float
    standard_error: float
    interval_95: tuple[float, float]  # Wilson score
    majority: float  # the most frequent label's share: what sending nothing gets
    level_utility: LevelUtility | None  # what the server's manifest reports for the level
    confusion: dict[str, dict[str, int]]  # true label -> answered label -> rows
    errors: dict[str, int] = field(default_factory=dict)  # by gRPC status (or DEL exception)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _check(concurrency: int, limit: int | None) -> None:
    if not (isinstance(concurrency, int) and 1 <= concurrency <= MAX_CONCURRENCY):
        raise RequestOptionError(
            f"concurrency must be in 1..{MAX_CONCURRENCY}, got {concurrency!r}"
        )
    if limit is not None and limit < 1:
        raise RequestOptionError(f"limit must be >= 1, got {limit!r}")


async def evaluate_file(
    config: ClientConfig,
    path: Path,
    *,
    level: float | None = None,
    mechanism: str = "binomial",
    concurrency: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Classify the first `limit` rows of `path` (all by default) at the server's level for
    target attack rate `level` (None: its most private), `concurrency` requests in flight;
    mechanism "raw" measures the server without privacy (a server started with raw enabled)."""
    _check(concurrency, limit)
    rows = read_labelled(path)
    async with AsyncClient(config) as client:
        model = (await client.manifest()).model
        if not model.labels:
            raise RequestOptionError(f"{config.target} serves no classifier (task {model.task!r})")
        examples = resolve(rows, model.labels, path)[:limit]
        answers: list[tuple[str, ClassificationResult]] = []
        errors: Counter[str] = Counter()
        gate = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(examples), desc="classify", unit="row", disable=not progress)
        begin = time.perf_counter()

        async def classify(text: str, truth: str) -> None:
            async with gate:
                try:
                    answers.append(
                        (truth, await client.classify(text, level=level, mechanism=mechanism))
                    )
                except ServerError as exc:
                    errors[exc.code] += 1
                except DELError as exc:  # refused on this side: this row only (too long, ...)
                    errors[type(exc).__name__] += 1
                bar.update()

        try:
            # The first row alone: a refusal of the options (no such level) ends the run with
            # its own message instead of once per row; it also fetches the bundle once.
            answers.append(
                (
                    examples[0][1],
                    await client.classify(examples[0][0], level=level, mechanism=mechanism),
                )
            )
            bar.update()
            await asyncio.gather(*(classify(text, truth) for text, truth in examples[1:]))
        finally:
            bar.close()
        elapsed = time.perf_counter() - begin
    return _report(config, path, model.labels, answers, examples, errors, elapsed)


def _report(
    config: ClientConfig,
    path: Path,
    labels: Sequence[str],
    answers: list[tuple[str, ClassificationResult]],
    examples: list[tuple[str, str]],
    errors: Counter[str],
    elapsed: float,
) -> EvaluationReport:
    first = answers[0][1]
    confusion = {truth: dict.fromkeys(labels, 0) for truth in labels}
    for truth, result in answers:
        confusion[truth][result.label] += 1
    correct = sum(confusion[label][label] for label in labels)
    total = len(answers)
    accuracy = correct / total
    # Wilson's score interval: honest at small counts and near 0 or 1, unlike the normal one
    interval = binomtest(correct, total).proportion_ci(method="wilson")
    shares = Counter(truth for _, truth in examples)
    return EvaluationReport(
        target=config.target,
        file=str(path),
        level_id=first.level_id,
        private=first.private,
        mu_token=first.mu_token,
        epsilon_token=first.epsilon_token,
        delta=first.delta,
        bits_per_token=sum(r.usage.payload_bits for _, r in answers)
        / sum(r.usage.prompt_tokens for _, r in answers),
        rows=total,
        correct=correct,
        accuracy=accuracy,
        standard_error=math.sqrt(accuracy * (1 - accuracy) / total),
        interval_95=(interval.low, interval.high),
        majority=max(shares.values()) / len(examples),
        level_utility=first.utility,
        confusion=confusion,
        errors=dict(sorted(errors.items())),
        elapsed_s=elapsed,
    )
