"""Interventions that differ per batch row, so that many conditions share one forward (METHODS §6, sweeps).

Every intervention of the sweeps and of the all-layer test is, per row, an affine map of the residual stream at
fixed sites: h <- h - U U^T h (+ a). Rows of different conditions can therefore share one batch. At each hooked
site, the conditions that act there have their bases stacked into one (slots, d, k_max) float32 tensor (columns
beyond a condition's own k are zero) and every other condition points at an all-zero slot: the zero basis and
the zero offset leave a row bit for bit unchanged, so a baseline row in a mixed batch is an unhooked row. Before
every forward (or every `generate` call, whose batch keeps its rows from the prompt through every generated
step) the caller says which condition each row belongs to with `ConditionRows.select`; a forward whose batch does
not match the selection raises instead of mixing conditions up. Projections are computed in float32 whatever
the model dtype, as in `rankaudit.interventions`, whose single-condition hooks these reproduce row by row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rankaudit.capture import decoder_blocks
from rankaudit.interventions import _input_hook, _output_hook, checked_basis, register_layer_hook, unit, write_direction
from rankaudit.sublayers import hidden_size, sublayer_writes


@dataclass(frozen=True)
class RowIntervention:
    """What one condition does to its rows; the default (nothing) is the unablated baseline.

    - `bases`: {layer: d x k orthonormal basis}, h <- h - U U^T h at each layer (`projection_ablation`);
    - `direction`: Arditi's all-layer ablation of this direction (`direction_ablation`);
    - `addition`: (layer, vector), h <- h + vector at that layer (`activation_addition`), applied after any
      projection at the same layer.
    """

    bases: Mapping[int, Any] = field(default_factory=dict)
    direction: Any = None
    addition: tuple[int, Any] | None = None


class ConditionRows:
    """Which condition each row of the next forward belongs to (indices into the intervention list)."""

    def __init__(self, n_conditions: int) -> None:
        self.n_conditions = n_conditions
        self.version = 0
        self._rows: Any = None
        self._on: dict[Any, Any] = {}

    def select(self, conditions: Sequence[int]) -> None:
        """Set the condition of every batch row, in batch order, before the forward (or `generate`) call."""
        import torch

        rows = torch.as_tensor(list(conditions), dtype=torch.long)
        if rows.ndim != 1 or rows.numel() == 0:
            raise ValueError("ConditionRows.select: give one condition index per batch row")
        if int(rows.min()) < 0 or int(rows.max()) >= self.n_conditions:
            raise ValueError(f"ConditionRows.select: condition indices must lie in 0..{self.n_conditions - 1}, "
                             f"got {int(rows.min())}..{int(rows.max())}")
        self._rows, self._on = rows, {}
        self.version += 1

    def on(self, hidden: Any) -> Any:
        """The selected condition indices on `hidden`'s device, checked against its batch size."""
        if self._rows is None:
            raise RuntimeError("per-row interventions: no rows selected; call ConditionRows.select before the forward")
        if hidden.shape[0] != self._rows.numel():
            raise ValueError(f"per-row interventions: {self._rows.numel()} rows selected but the forward has a batch "
                             f"of {hidden.shape[0]}")
        rows = self._on.get(hidden.device)
        if rows is None:
            rows = self._on.setdefault(hidden.device, self._rows.to(hidden.device))
        return rows


class _RowMap:
    """h <- h - U_c U_c^T h + a_c for each row's condition c at one site, in float32."""

    def __init__(self, rows: ConditionRows, bases: Sequence[np.ndarray | None], offsets: Sequence[np.ndarray | None], d: int) -> None:
        import torch

        acting = [c for c in range(len(bases)) if bases[c] is not None or offsets[c] is not None]
        slot = np.zeros(len(bases), np.int64)
        slot[acting] = np.arange(1, len(acting) + 1)
        k_max = max([bases[c].shape[1] for c in acting if bases[c] is not None], default=0)
        stacked = np.zeros((len(acting) + 1, d, k_max), np.float64)
        added = np.zeros((len(acting) + 1, d), np.float64)
        for c in acting:
            if bases[c] is not None:
                stacked[slot[c], :, :bases[c].shape[1]] = bases[c]
            if offsets[c] is not None:
                added[slot[c]] = offsets[c]
        self.rows = rows
        self.slot = torch.as_tensor(slot)
        self.bases = torch.as_tensor(stacked, dtype=torch.float32) if k_max else None
        self.offsets = torch.as_tensor(added, dtype=torch.float32) if any(offsets[c] is not None for c in acting) else None
        self._stacks: dict[Any, tuple[Any, Any, Any]] = {}
        self._gathered: dict[Any, tuple[int, Any, Any]] = {}

    def _for_rows(self, hidden: Any) -> tuple[Any, Any]:
        """The (batch, d, k_max) bases and (batch, 1, d) offsets of the selected rows, gathered once per selection."""
        device = hidden.device
        rows = self.rows.on(hidden)
        cached = self._gathered.get(device)
        if cached is None or cached[0] != self.rows.version:
            stacks = self._stacks.get(device)
            if stacks is None:
                stacks = self._stacks[device] = tuple(None if t is None else t.to(device) for t in (self.slot, self.bases, self.offsets))
            slot, bases, offsets = stacks
            slots = slot[rows]
            cached = self._gathered[device] = (self.rows.version, None if bases is None else bases[slots],
                                               None if offsets is None else offsets[slots][:, None, :])
        return cached[1], cached[2]

    def __call__(self, hidden: Any) -> Any:
        import torch

        if hidden.ndim != 3:
            raise ValueError(f"per-row interventions: expected (batch, positions, d) hidden states, got shape {tuple(hidden.shape)}")
        bases, offsets = self._for_rows(hidden)
        values = hidden.to(torch.float32)
        if bases is not None:
            values = values - torch.bmm(torch.bmm(values, bases), bases.transpose(1, 2))
        if offsets is not None:
            values = values + offsets
        return values.to(hidden.dtype)


def _offset(vector: Any, d: int, where: str) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64).ravel()
    if array.shape != (d,) or not np.all(np.isfinite(array)):
        raise ValueError(f"{where}: vector of shape {np.shape(vector)} is not a finite vector in R^{d}")
    return array


@contextlib.contextmanager
def row_interventions(model: Any, conditions: Sequence[RowIntervention]) -> Iterator[ConditionRows]:
    """Within the block, each batch row gets the intervention of its condition (set on the yielded `ConditionRows`).

    Bases and vectors are checked up front (errors name the condition and layer), before any forward.
    """
    _, blocks = decoder_blocks(model)
    d = hidden_size(model)
    if not conditions:
        raise ValueError("row_interventions: no conditions")
    rows = ConditionRows(len(conditions))
    bases = [{int(layer): checked_basis(basis, d, f"condition {c}, basis at layer {layer}") for layer, basis in spec.bases.items()}
             for c, spec in enumerate(conditions)]
    additions = [None if spec.addition is None else (int(spec.addition[0]), _offset(spec.addition[1], d, f"condition {c}, addition"))
                 for c, spec in enumerate(conditions)]
    directions = [None if spec.direction is None else unit(spec.direction, f"condition {c}, direction") for c, spec in enumerate(conditions)]
    if any(r is not None and r.size != d for r in directions):
        raise ValueError(f"row_interventions: a direction does not live in R^{d}")
    layers = sorted({layer for by_layer in bases for layer in by_layer} | {a[0] for a in additions if a is not None})
    # found before any hook exists: locating the sublayer writes may run a probe forward of its own
    writes = sublayer_writes(model) if any(r is not None for r in directions) else []
    handles = []
    try:
        for layer in layers:
            offsets = [a[1] if a is not None and a[0] == layer else None for a in additions]
            handles.append(register_layer_hook(blocks, layer, _RowMap(rows, [b.get(layer) for b in bases], offsets, d)))
        if writes:
            none = [None] * len(conditions)
            for block in blocks:
                inputs = _RowMap(rows, [None if r is None else r[:, None] for r in directions], none, d)
                handles.append(block.register_forward_pre_hook(_input_hook(inputs), with_kwargs=True))
            for write in writes:
                written = _RowMap(rows, [None if r is None else write_direction(write, r)[:, None] for r in directions], none, d)
                handles.append(write.module.register_forward_hook(_output_hook(written)))
    except Exception:
        for handle in handles:
            handle.remove()
        raise
    try:
        yield rows
    finally:
        for handle in handles:
            handle.remove()
