"""`del-client evaluate`: a labelled file classified through a server, and how often it was right.

    report = asyncio.run(evaluate_file(ClientConfig("localhost:50052"), Path("dev.tsv"), level=0.10))
    print(report.accuracy, report.interval_95)   # the served level on your own held-out data

A provider's report says what a level's accuracy was on its own dev set; this measures it on
the real path (this client's noise, the wire, the server's batching) and on data the provider
never saw. The file is `text<TAB>label` per line, the label a name the server's manifest lists
or its index there (GLUE's SST-2 files: 0 negative, 1 positive); a first line whose label is
neither a label nor a number is a header. Every row is privatized afresh, as a user's prompt
would be; no privacy budget is charged, since the rows are evaluation data, not the user's
prompts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    """Every non-blank `text<TAB>label` line of `path` (a header line included: see
    resolve_labels); the label is what follows the last tab."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
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
    """The label `written` names: its name, else its index unless some name is a number
    (then "1" could mean either)."""
    if written in labels:
        return written
    indexed = not any(label.isdecimal() for label in labels)
    if indexed and written.isdecimal() and int(written) < len(labels):
        return labels[int(written)]
    return None


@dataclass(frozen=True)
class LabelledFile:
    examples: list[tuple[str, str]]  # (text, label name)
    header: str | None  # the first line, skipped as a header


def resolve_labels(rows: list[LabelledRow], labels: Sequence[str], path: Path) -> LabelledFile:
    """Each row's label name. The first row is a header when its label is neither a label nor
    a number (GLUE's `sentence<TAB>label`); any other row that names no label is an error."""
    if not rows:
        raise RequestOptionError(f"{path}: no labelled rows")
    first = rows[0]
    is_header = _label_name(first.label, labels) is None and not first.label.isdecimal()
    header = f"{first.text}\t{first.label}" if is_header else None
    body = rows[1:] if is_header else rows
    if not body:
        raise RequestOptionError(
            f"{path}: no labelled rows after the header line {header!r} "
            f"(labels: {', '.join(labels)} or their index)"
        )
    examples = []
    for row in body:
        name = _label_name(row.label, labels)
        if name is None:
            raise RequestOptionError(
                f"{path}:{row.line}: label {row.label!r} is neither one of the server's labels "
                f"({', '.join(labels)}) nor an index 0..{len(labels) - 1} of one"
            )
        examples.append((row.text, name))
    return LabelledFile(examples, header)


@dataclass(frozen=True)
class EvaluationReport:
    target: str
    file: str
    header: str | None  # the file's first line, skipped as a header
    level_id: str  # the level every answer was served at ("" for raw)
    private: bool  # False: the raw mechanism, no privacy (ε and μ None)
    mu_token: float | None
    epsilon_token: float | None  # exact, per token, at `delta`
    delta: float | None
    bits_per_token: float  # payload bits per prompt token, over the answered rows
    attempted: int  # rows tried (sent, or refused on this side)
    answered: int  # rows the server labelled; accuracy and majority are over these
    correct: int
    accuracy: float
    standard_error: float
    interval_95: tuple[float, float]  # Wilson score
    majority: float  # the most frequent true label's share: what sending nothing gets
    level_utility: LevelUtility | None  # what the server's manifest reports for the level
    confusion: dict[str, dict[str, int]]  # true label -> answered label -> rows
    # failed rows by gRPC status name (the server's refusal) or DEL exception class (this side's)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def failed(self) -> int:
        return self.attempted - self.answered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_options(concurrency: int, limit: int | None) -> None:
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
    progress: bool = False,
) -> EvaluationReport:
    """Classify the first `limit` rows of `path` (all by default) at the server's level for
    target attack rate `level` (None: its most private), `concurrency` requests in flight;
    mechanism "raw" measures the server without privacy (a server started with raw enabled).

    A row the server or this side refuses (too long, say) is counted in `errors` and left out
    of the accuracy; options that no row could be sent with (no such level) raise at once.
    """
    _check_options(concurrency, limit)
    rows = read_labelled(path)
    async with AsyncClient(config) as client:
        model = (await client.manifest()).model
        if not model.labels:
            raise RequestOptionError(f"{config.target} serves no classifier (task {model.task!r})")
        labelled = resolve_labels(rows, model.labels, path)
        examples = labelled.examples[:limit]
        if mechanism != "raw":
            model.level(level)  # the level exists, else its own error now
        await client.bundle(mechanism)  # fetched once, before the rows race for it
        answers: list[tuple[str, ClassificationResult]] = []
        errors: Counter[str] = Counter()
        pending = iter(examples)  # shared: each worker takes the next row
        begin = time.perf_counter()
        with tqdm(total=len(examples), desc="classify", unit="row", disable=not progress) as bar:

            async def worker() -> None:
                for text, truth in pending:
                    try:
                        result = await client.classify(text, level=level, mechanism=mechanism)
                        answers.append((truth, result))
                    except ServerError as exc:
                        errors[exc.code] += 1
                    except DELError as exc:  # refused on this side: this row only
                        errors[type(exc).__name__] += 1
                    bar.update()

            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, len(examples))):
                    group.create_task(worker())
        elapsed = time.perf_counter() - begin
    if not answers:
        raise DELError(f"no row of {path} was answered: {dict(errors)}")
    return _report(config, path, labelled.header, model.labels, answers, errors, elapsed)


def _report(
    config: ClientConfig,
    path: Path,
    header: str | None,
    labels: Sequence[str],
    answers: list[tuple[str, ClassificationResult]],
    errors: Counter[str],
    elapsed: float,
) -> EvaluationReport:
    first = answers[0][1]
    confusion = {truth: dict.fromkeys(labels, 0) for truth in labels}
    for truth, result in answers:
        confusion[truth][result.label] += 1
    correct = sum(confusion[label][label] for label in labels)
    answered = len(answers)
    accuracy = correct / answered
    # Wilson's score interval: honest at small counts and near 0 or 1, unlike the normal one
    interval = binomtest(correct, answered).proportion_ci(method="wilson")
    label_counts = Counter(truth for truth, _ in answers)
    return EvaluationReport(
        target=config.target,
        file=str(path),
        header=header,
        level_id=first.level_id,
        private=first.private,
        mu_token=first.mu_token,
        epsilon_token=first.epsilon_token,
        delta=first.delta,
        bits_per_token=sum(r.usage.payload_bits for _, r in answers)
        / sum(r.usage.prompt_tokens for _, r in answers),
        attempted=answered + sum(errors.values()),
        answered=answered,
        correct=correct,
        accuracy=accuracy,
        standard_error=math.sqrt(accuracy * (1 - accuracy) / answered),
        interval_95=(interval.low, interval.high),
        majority=max(label_counts.values()) / answered,
        level_utility=first.utility,
        confusion=confusion,
        errors=dict(sorted(errors.items())),
        elapsed_s=elapsed,
    )
