"""A CUDA device on a machine without one is refused before any weights are read, naming the config keys."""

import pytest
import torch

from rankaudit.models import load_model


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_names_the_setting(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"device 'cuda' requested but torch sees no CUDA device; set runtime.device"):
        load_model(str(tmp_path / "no-such-model"), device="cuda")
