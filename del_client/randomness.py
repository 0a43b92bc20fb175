"""Where the mechanism's randomness comes from.

The guarantee assumes the server cannot predict the client's random numbers, so production
draws come from ChaCha20 (randomgen's `ChaCha`, 20 rounds: the stream cipher behind Linux's
/dev/urandom) keyed with 256 bits of operating-system entropy. It plugs into
`numpy.random.Generator`, so the samplers stay vectorized. A forked child re-keys itself, so
parent and child never replay the same stream.

`seeded_generator_for_tests` is the only seeded path; its name says what it is for.
"""

from __future__ import annotations

import os
import secrets
import threading

import numpy as np
from randomgen import ChaCha

_ROUNDS = 20
_lock = threading.Lock()
_process_generator: tuple[int, np.random.Generator] | None = None


def new_secure_generator() -> np.random.Generator:
    """A fresh ChaCha20 generator keyed from OS entropy (`secrets`, i.e. getrandom/urandom)."""
    return np.random.Generator(ChaCha(key=secrets.randbits(256), counter=0, rounds=_ROUNDS))


def secure_generator() -> np.random.Generator:
    """This process's shared secure generator, re-keyed after a fork."""
    global _process_generator
    with _lock:
        if _process_generator is None or _process_generator[0] != os.getpid():
            _process_generator = (os.getpid(), new_secure_generator())
        return _process_generator[1]


def seeded_generator_for_tests(seed: int) -> np.random.Generator:
    """A reproducible ChaCha20 generator. NOT private: anyone who knows the seed knows the noise."""
    return np.random.Generator(ChaCha(seed=seed, rounds=_ROUNDS))
