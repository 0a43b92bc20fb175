"""Finished units of a long evaluation kept on disk, so that `del-server eval --resume` picks a
stopped run up where it stopped.

A full run on two cores takes hours (each baseline level is verified with every attack, the
particle attacks included), longer than one sitting; every unit it finishes (a baseline's
calibrated level, a trained soft prompt, an attack row, a utility row) is written to
OUT/checkpoints/ as it completes. They are stored with the fingerprint of what they measure
(the configuration and the adapter's digest): resuming under another fingerprint is refused,
so a report never mixes measurements of two adapters or two sample sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FINGERPRINT = "fingerprint.json"
STARTED = "started"  # when the first of the runs a resumed evaluation spans began (Unix time)
# What may differ between a run and the one it resumes: where it writes, and how fast it runs.
UNMEASURED = ("out", "threads", "jobs")


class Checkpoints:
    """Records (JSON) and tensors under one directory, each computed once per fingerprint."""

    def __init__(self, directory: Path, fingerprint: dict, *, resume: bool) -> None:
        self.directory = directory
        self.resume = resume
        if not resume and directory.exists():
            # A run that starts over leaves nothing of earlier runs for a later resume to mix in.
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / STARTED).exists():
            _write_atomically(directory / STARTED, f"{time.time()}\n")
        path = directory / FINGERPRINT
        fingerprint = json.loads(json.dumps(fingerprint))  # as stored: tuples read as lists
        if resume and path.exists():
            stored = json.loads(path.read_text())
            differing = sorted(
                k for k in stored.keys() | fingerprint.keys() if stored.get(k) != fingerprint.get(k)
            )
            if differing:
                raise SystemExit(
                    f"{directory} holds checkpoints of another evaluation ({', '.join(differing)} "
                    "differ): run without --resume to start over"
                )
        _write_atomically(path, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")

    @property
    def started(self) -> float:
        """When the first run of this evaluation began (the wall time of a resumed one)."""
        return float((self.directory / STARTED).read_text())

    @classmethod
    def for_run(
        cls, config_dict: dict, adapter_sha256: str, out: Path, *, resume: bool
    ) -> Checkpoints:
        fingerprint = {k: v for k, v in config_dict.items() if k not in UNMEASURED}
        return cls(
            out / "checkpoints", {**fingerprint, "adapter_sha256": adapter_sha256}, resume=resume
        )

    def record(self, key: str, compute: Callable[[], dict]) -> dict:
        """The JSON record stored under `key`, computed (and stored) unless resuming finds it."""
        found = self.stored(key)
        return found if found is not None else self.store(key, compute())

    def stored(self, key: str) -> dict | None:
        """The record under `key` if resuming finds one (for units computed elsewhere)."""
        path = self.directory / f"{key}.json"
        return json.loads(path.read_text()) if self.resume and path.exists() else None

    def store(self, key: str, record: dict) -> dict:
        path = self.directory / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, json.dumps(record) + "\n")
        return record

    def tensors(
        self, key: str, compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """As `record`, for named tensors (safetensors)."""
        path = self.directory / f"{key}.safetensors"
        if self.resume and path.exists():
            return load_file(path)
        tensors = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file({name: t.detach().contiguous() for name, t in tensors.items()}, partial)
        os.replace(partial, path)
        return tensors


def _write_atomically(path: Path, text: str) -> None:
    """A run killed mid-write leaves the previous file or none, never half a record; each
    process writes its own partial file (`eval --jobs` workers open the checkpoints at once)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)
