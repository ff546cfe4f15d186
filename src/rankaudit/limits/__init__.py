"""The limits of the rank diagnostics (METHODS §3 and §7): per-layer records, the tables, the generated claims
and the figure. The job entry points that read and write files are in `rankaudit.stages.limits`."""
