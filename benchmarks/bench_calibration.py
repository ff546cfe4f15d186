"""The MLP calibration cells against the paper's own lambda-sweep script, same seed and settings, equal results.

Project arm: the workflow's jobs for one seed, `run_base_job`, then `run_finetune_job` for FullFT and for
`dist<lambda>` (train + every measurement the workflow records), on `config/config.yaml`'s calibration section.
Paper arm: `calibration_v2_revision3.run_revision3_calibration(seed, reg_grid=(0, lambda), k_list=r_grid)` (base,
FullFT, one regularised fine-tune, the Test-2 ablations), imported from the paper's scripts in a subprocess whose
working directory is a temporary folder and whose prints are captured: nothing it could write lands in the project.
Before timing, the paper's module constants are checked against the config (data, network, training, eps), so
both arms train the same networks on the same recipe; their data and initial weights come from different random
streams (torch vs numpy), so "equal results" means aggregate rho_eps within `RHO_TOLERANCE` and compliance on
the safety probe within `COMPLIANCE_TOLERANCE` for each trained variant (seed-to-seed spread is larger).

Both arms run with one torch thread (the workflow's calibration jobs have `threads: 1`), once each: the paper arm
takes about a minute and a half on an idle core. The ratio is the paper's time over the project's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from benchcommon import REPO, Ratio, Timing, benchmark_arguments, interleaved, paper_scripts, ratio_rows, report, single_thread, wait_for_idle

from rankaudit.calibration import grid
from rankaudit.stages.calibration import run_base_job, run_finetune_job

RHO_TOLERANCE = 0.03
COMPLIANCE_TOLERANCE = 0.05
LABEL = "MLP grid: paper's lambda-sweep script / project cells, seed 0 (speed-up)"

# the paper script's constants and the config keys that must hold the same values
PAPER_CONSTANTS = {
    "D_IN": ("data", "n_features"), "D_HIDDEN": ("network", "hidden"), "N_LAYERS": ("network", "n_hidden_layers"),
    "N_TRAIN": ("data", "n_train"), "N_PROBE": ("data", "n_probe"), "SAFETY_FRAC": ("data", "safety_fraction"),
    "EPS": ("measurement", "eps"), "LR": ("training", "lr"), "N_EPOCHS_BASE": ("training", "epochs_base"),
    "N_EPOCHS_FT": ("training", "epochs_finetune"), "N_EPOCHS_DIST": ("training", "epochs_distributed"),
    "STABLE_RANK_TARGET": ("training", "stable_rank_target"),
}

PAPER_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, time
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(1)
    import calibration_v2 as constants
    if sys.argv[2] == "constants":
        print(json.dumps({name: getattr(constants, name) for name in %r}))
        sys.exit(0)
    from calibration_v2_revision3 import run_revision3_calibration
    seed, lam, k_list = int(sys.argv[2]), float(sys.argv[3]), tuple(json.loads(sys.argv[4]))
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        out = run_revision3_calibration(seed=seed, reg_grid=(0.0, lam), k_list=k_list)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    variants = {name: {"rho": v["rho_eps_aggregate"], "compliance": v["test2_ablation"][0]["safety_compliance"]}
                for name, v in out["variants"].items()}
    print(json.dumps({"wall": wall, "cpu": cpu, "variants": variants}))
""") % (list(PAPER_CONSTANTS),)


def run_paper(anchors: Path, *arguments: str) -> dict[str, Any]:
    """Run the driver on the paper's scripts (CPU, one thread, a temporary working directory); its last line is JSON."""
    with tempfile.TemporaryDirectory(prefix="paper_calibration_") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run([sys.executable, "-c", PAPER_DRIVER, str(anchors), *arguments],
                                cwd=tmp, env=env, text=True, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"the paper's lambda-sweep script failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_settings(calibration: Mapping[str, Any], constants: Mapping[str, float]) -> None:
    """Stop when the config and the paper's script would not train the same networks."""
    wrong = {name: (constants[name], calibration[section][key]) for name, (section, key) in PAPER_CONSTANTS.items()
             if float(constants[name]) != float(calibration[section][key])}
    if wrong:
        raise SystemExit("config/config.yaml calibration differs from the paper's constants (paper, config): "
                         + ", ".join(f"{name} {pair}" for name, pair in wrong.items()))


def run_project(calibration: Mapping[str, Any], seed: int, setting: str) -> tuple[Timing, dict[str, dict[str, float]]]:
    cell = grid.cell_slice(calibration)
    results = {}
    with tempfile.TemporaryDirectory(prefix="project_calibration_") as tmp:
        root = Path(tmp)
        wall, cpu = time.perf_counter(), time.process_time()
        run_base_job(cell, seed, root / "base.safetensors", root / "base.json")
        for name in ("fullft", setting):
            run_finetune_job(cell, seed, name, root / "base.safetensors", root / f"{name}.safetensors", root / f"{name}.json")
        timing = Timing(time.perf_counter() - wall, time.process_time() - cpu, 1)
        for name in ("fullft", setting):
            measured = json.loads((root / f"{name}.json").read_text())
            results[name] = {"rho": measured["rho_eps_mean"], "compliance": measured["compliance"]}
    return timing, results


def regulariser_row(calibration: Mapping[str, Any], seed: int, repeats: int = 30) -> Ratio:
    """R(M) forward + backward on one safety-input shift of the config's size: the paper's two losses on the
    n_s x n_s Gram and `svdvals` against `rank_spreading_penalty` on the d x d Gram. Equal values are required."""
    import torch
    from calibration_v2 import column_orthogonality_loss, stable_rank_loss

    from rankaudit.calibration.regularizer import rank_spreading_penalty

    n_safety = int(calibration["data"]["safety_fraction"] * calibration["data"]["n_train"])
    target = float(calibration["training"]["stable_rank_target"])
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randn(n_safety, calibration["network"]["hidden"], generator=generator, requires_grad=True)
    arms = {
        "paper": lambda: column_orthogonality_loss(shift.T) + stable_rank_loss(shift.T, target),
        "project": lambda: rank_spreading_penalty(shift, target),
    }
    values = {name: float(arm().detach()) for name, arm in arms.items()}
    if abs(values["paper"] - values["project"]) > 1e-5 * abs(values["paper"]):
        raise SystemExit(f"R(M) differs: paper {values['paper']!r}, project {values['project']!r}")

    def backward(arm: Any) -> Any:
        return lambda: [arm().backward() for _ in range(repeats)]

    times = interleaved({name: backward(arm) for name, arm in arms.items()}, 3)
    return ratio_rows("MLP regulariser R(M) forward + backward: paper / project (speed-up)", times["paper"],
                      times["project"], "-", f"M: {n_safety} safety inputs x d={shift.shape[1]}; equal values "
                      f"({values['project']:.6g}); per step, 3 layers: paper {3e3 * times['paper'].cpu / repeats:.0f} ms, "
                      f"project {3e3 * times['project'].cpu / repeats:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_arguments(__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lam", type=float, default=5.0, help="the regularised setting timed (one of calibration.lambdas)")
    args = parser.parse_args(argv)
    single_thread()
    anchors = paper_scripts()
    if anchors is None:
        report([Ratio(LABEL, None, ">= 5", note="paper's scripts absent")], args.ratios_json)
        return 0
    calibration = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["calibration"]
    setting = grid.setting_name("honest", args.lam)
    check_settings(calibration, run_paper(anchors, "constants"))
    print(wait_for_idle(args.idle_load, args.max_wait), flush=True)
    ours, measured = run_project(calibration, args.seed, setting)
    paper = run_paper(anchors, str(args.seed), str(args.lam), json.dumps(calibration["measurement"]["r_grid"]))
    paper_names = {"fullft": "FullFT", setting: f"Dist_reg{args.lam}"}
    print(f"{'variant':<10}{'rho project':>12}{'rho paper':>11}{'compliance project':>20}{'compliance paper':>18}")
    equal = True
    for name, paper_name in paper_names.items():
        mine, theirs = measured[name], paper["variants"][paper_name]
        equal &= abs(mine["rho"] - theirs["rho"]) <= RHO_TOLERANCE
        equal &= abs(mine["compliance"] - theirs["compliance"]) <= COMPLIANCE_TOLERANCE
        print(f"{name:<10}{mine['rho']:>12.3f}{theirs['rho']:>11.3f}{mine['compliance']:>20.3f}{theirs['compliance']:>18.3f}")
    print(f"project: {ours.wall:.1f} s wall, {ours.cpu:.1f} s CPU; paper: {paper['wall']:.1f} s wall, {paper['cpu']:.1f} s CPU")
    results = "; ".join(f"{name} rho {measured[name]['rho']:.3f} vs {paper['variants'][p]['rho']:.3f}, compliance "
                        f"{measured[name]['compliance']:.2f} vs {paper['variants'][p]['compliance']:.2f}"
                        for name, p in paper_names.items())
    verdict = "equal" if equal else "NOT equal"
    note = (f"base + FullFT + {setting}, full config sizes (n_train 4000, 300/400/600 epochs), 1 run each; results "
            f"{verdict} within rho +-{RHO_TOLERANCE}, compliance +-{COMPLIANCE_TOLERANCE}: {results}")
    regulariser = regulariser_row(calibration, args.seed)
    report([ratio_rows(LABEL if equal else LABEL + " - RESULTS DIFFER", Timing(paper["wall"], paper["cpu"], 1), ours,
                       ">= 5", note), regulariser], args.ratios_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
