"""The causal stage's library (METHODS §4-6); its job entry points are `rankaudit.stages.causal` (GPU jobs) and
`rankaudit.stages.causal_report` (tables and figures).

- `inputs`: the aligned model, chat-format prompt sets, generation settings and judge, the selection's outputs;
- `selection`: Arditi's candidates, scores, filters and choice, and the refusal-score prompt filter;
- `evaluation`: many ablation conditions measured in shared batches on the held-out prompts;
- `abliteration_check`: the float32 check of the weight-orthogonalized model against the hook ablation;
- `sweep_plan`: a sweep's band layers, bases, k grid, condition rows and resumable parts;
- `no_refusal`: what every job writes when the aligned model has no refusal to ablate;
- `tables` and `directions`: the report tables (ablations, sweeps, ordering; canonical cosines, layer convention).
"""
