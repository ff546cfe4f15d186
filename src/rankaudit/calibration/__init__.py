"""Constructive calibration on a 3-hidden-layer MLP (METHODS section 6 and the MLP half of section 7).

The truth is under our control here: a base network learns a task, "aligned" variants learn to refuse (output 0)
on a safety region, and the variants differ in how spread out their activation shift is (a rank-1 steering
vector, a plain fine-tune, fine-tunes with a rank-spreading regularizer of growing weight). The grid then asks
whether the effective rank of the shift predicts how much of it a projection ablation must remove to undo the
refusal, and measures the spectral-gap quantity kappa for honest x unsafe pairs.

Modules: `grid` (setting names, the cell list; no torch, imported by the Snakefile), `config` (typed config
slices), `data`, `network`, `regularizer`, `training`, `measurements` (float64 numpy), `tables` and `figures`
(aggregation; no torch). The job entry points are `rankaudit.stages.calibration` (the cells, in torch) and
`rankaudit.stages.calibration_report` (tables and figures).
"""
