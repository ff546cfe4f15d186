"""`make bench`: run every benchmark and print ONE markdown table of the ratios they measured, each with its target.

Each benchmark measures its ratio side by side in one process (both arms interleaved, single-threaded) and hands
its rows back as JSON; its full report goes to benchmarks/out/<name>.log. Progress goes to stderr, the table to
stdout. Timings are never pass/fail tests: the exit status only says whether every benchmark ran.
`python benchmarks/run_all.py NAME...` runs the benchmarks whose file name contains one of the NAMEs.
Sizes are reduced where the paper's would not fit ~10 minutes on 2 cores; each row says what it measured.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchcommon import REPO, Ratio, markdown_table, read_rows

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
# the arguments each benchmark runs with under `make bench` (a few rounds, so that the whole run fits its budget)
RUNS = {
    "bench_capture": ["--rounds", "2"],
    "bench_generation": ["--rounds", "3"],
    "bench_calibration": [],
    "bench_spectra": ["--rounds", "3"],
    "bench_dag": ["--rounds", "1"],
}
MAX_WAIT_FOR_IDLE = "20"


def run(name: str, rows_path: Path) -> tuple[list[Ratio], float, bool]:
    log = OUT / f"{name}.log"
    command = [sys.executable, str(HERE / f"{name}.py"), *RUNS[name], "--ratios-json", str(rows_path),
               "--max-wait", MAX_WAIT_FOR_IDLE]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if code != 0 or not rows_path.exists():
        return [Ratio(f"{name} FAILED (exit {code})", None, "-", note=f"see {log.relative_to(REPO)}")], seconds, False
    return read_rows(rows_path), seconds, True


def main(selection: list[str]) -> int:
    names = [name for name in RUNS if not selection or any(s in name for s in selection)]
    OUT.mkdir(exist_ok=True)
    rows: list[Ratio] = []
    failed = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_rows_") as tmp:
        for name in names:
            print(f"{name} ...", end=" ", file=sys.stderr, flush=True)
            found, seconds, ok = run(name, Path(tmp) / f"{name}.json")
            print(f"{seconds:.0f} s{'' if ok else ' FAILED'}", file=sys.stderr, flush=True)
            rows += found
            if not ok:
                failed.append(name)
    total = time.perf_counter() - started
    print(f"## make bench: {len(rows)} ratios, {total / 60:.1f} min on {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}), 1-min load average {os.getloadavg()[0]:.1f} at the end\n")
    print(markdown_table(rows))
    print("\nvalue: the ratio from process CPU time (each arm single-threaded), judged against the target; wall time "
          "beside it. Speed-ups are slow arm / fast arm. Full reports: benchmarks/out/*.log")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
