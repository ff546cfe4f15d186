"""Run every benchmark (benchmarks/bench_*.py) one after the other and print their reports.

Benchmarks report ratios measured side by side in one run (timings on a shared 2-core machine are meaningless
alone); each script waits for an idle CPU itself. `make bench` calls this; `python benchmarks/run_all.py NAME`
runs the benchmarks whose file name contains NAME.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(selection: list[str]) -> int:
    scripts = sorted(path for path in HERE.glob("bench_*.py") if not selection or any(s in path.name for s in selection))
    failed = []
    for script in scripts:
        print(f"\n===== {script.name} =====", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nbenchmarks that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
