"""The one padding helper: exact tensors on both sides, positions that follow the mask, the pad-id rule."""

from types import SimpleNamespace

import pytest
import torch

from rankaudit.padding import pad_token_id, padded_batch, positions_from_mask


def test_left_padding_puts_every_last_token_in_the_last_column():
    input_ids, mask = padded_batch([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_right_padding_keeps_positions_equal_to_columns():
    input_ids, mask = padded_batch([[5], [8, 9]], pad_id=3, side="right")
    assert input_ids.tolist() == [[5, 3], [8, 9]]
    assert mask.tolist() == [[1, 0], [1, 1]]
    assert input_ids.dtype == mask.dtype == torch.long


def test_an_unknown_side_is_refused():
    with pytest.raises(ValueError, match="side must be"):
        padded_batch([[1]], 0, side="middle")


def test_pad_id_prefers_the_pad_token_then_eos_and_never_an_ordinary_id():
    assert pad_token_id(SimpleNamespace(pad_token_id=2, eos_token_id=1)) == 2
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=1)) == 1
    with pytest.raises(ValueError, match="neither a pad nor an eos token"):
        pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None, name_or_path="tiny"))
