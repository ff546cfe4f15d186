"""Cluster resources of a job that loads one model, from the model's config entry (no torch, parse-time safe).

A GPU rule's fixed request fits only the models it was sized for: Gemma-2-9B's bfloat16 weights alone are
18.5 GB, a 70B model's 141 GB. Every rule that loads a model therefore asks for what that model needs:
`models.<name>.resources` when the config states it, else an estimate from `models.<name>.n_params_b`, never
less than the rule's own floor, and scaled by Snakemake's `attempt` so that a job killed for memory or time is
retried with more (attempt 2 asks twice attempt 1's memory and time, attempt 3 three times). Jobs that load a
checkpoint the workflow wrote (derived and refusal-tuned checkpoints, the organisms' refusal check: float32, on the
CPU) are sized from the safetensors files on disk instead (`checkpoint_resources`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# host memory beside the weights: interpreter, torch and CUDA context, tokenizers, one batch of activations
HOST_OVERHEAD_MB = 6000
# host memory beside the weights of a CPU-only job (no CUDA context)
CPU_OVERHEAD_MB = 2000
# minutes added per GB of weights: reading them from a slow shared filesystem (about 8 MB/s) and the forwards,
# which grow with the model as well
RUNTIME_MINUTES_PER_GB = 2


def weights_mb(entry: Mapping[str, Any], dtype: str) -> float:
    """Size of the model's weights in MB in `dtype` (0 when the entry gives no `n_params_b`)."""
    return float(entry.get("n_params_b", 0.0)) * 1000.0 * DTYPE_BYTES[dtype]


def job_resources(entry: Mapping[str, Any], runtime: Mapping[str, Any], *, mem_mb: int, minutes: int,
                  attempt: int = 1, weight_copies: int = 1) -> dict[str, int]:
    """{mem_mb, runtime (minutes), gpu} of one attempt of a job loading the model of `entry`.

    `mem_mb` and `minutes` are the rule's floor at attempt 1; `weight_copies` is how many copies of the
    weights the job may hold in host memory (2 for a job that saves and reloads the model). Explicit
    `entry["resources"]` values replace the estimate (never below the floor); `gpu` is `resources.gpus`
    (default 1) when the model's device is CUDA, else 0.
    """
    dtype = entry.get("dtype", runtime["dtype"])
    device = str(entry.get("device", runtime["device"]))
    stated = entry.get("resources") or {}
    size = weights_mb(entry, dtype)
    memory = stated.get("mem_mb", math.ceil(HOST_OVERHEAD_MB + weight_copies * size))
    duration = stated.get("runtime", minutes + math.ceil(RUNTIME_MINUTES_PER_GB * size / 1000.0))
    return {
        "mem_mb": max(mem_mb, int(memory)) * attempt,
        "runtime": max(minutes, int(duration)) * attempt,
        "gpu": int(stated.get("gpus", 1)) if device.startswith("cuda") else 0,
    }


def checkpoint_weights_mb(directory: str | Path) -> float:
    """Size in MB of the safetensors weights in `directory`; 0 while it does not exist (Snakemake evaluates a
    job's resources again when the job is ready to run, once its input directories exist)."""
    folder = Path(directory)
    if not folder.is_dir():
        return 0.0
    return sum(path.stat().st_size for path in folder.glob("*.safetensors")) / 1e6


def checkpoint_resources(directories: Iterable[str | Path], *, mem_mb: int, minutes: int, attempt: int = 1,
                         weight_copies: int = 1) -> dict[str, int]:
    """{mem_mb, runtime} of one attempt of a CPU job loading the checkpoints in `directories` one at a time.

    The largest checkpoint counts, `weight_copies` times (its weights as stored: these jobs load float32 and save
    float32); `mem_mb` and `minutes` are the rule's floor at attempt 1, and both scale with `attempt`.
    """
    size = max((checkpoint_weights_mb(directory) for directory in directories), default=0.0)
    memory = math.ceil(CPU_OVERHEAD_MB + weight_copies * size)
    duration = minutes + math.ceil(RUNTIME_MINUTES_PER_GB * size / 1000.0)
    return {"mem_mb": max(mem_mb, memory) * attempt, "runtime": duration * attempt}
