"""What the real-checkpoint tests take from config/real_small.yaml, and where the prompt mirror is."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
REAL_SMALL = yaml.safe_load((REPO / "config" / "real_small.yaml").read_text())
SMOLLM2_GGUF = REAL_SMALL["checkpoints"]["smollm2_instruct"]["gguf"]
PLANTED = REAL_SMALL["checkpoints"]["smollm2_planted"]["derive"]
# the refusal_direction prompt mirror: ../shared/data/refusal_direction next to the repository (as in CI)
MIRROR = (REPO / ".." / "shared" / "data" / "refusal_direction").resolve()
