"""rankaudit: effective-rank audit of alignment-induced residual-stream shifts.

All scientific logic lives in this package; the Snakemake rules only route files and config slices to it.
"""

__version__ = "0.1.0"
