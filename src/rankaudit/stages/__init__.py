"""Job-level entry points: each function is what one workflow script calls (read inputs, compute, write)."""
