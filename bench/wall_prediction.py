"""How well the plan predicts a CPU run's wall time: from a probe of the same preset in the ledger, from an
earlier run, or on a machine the ledger has never seen (the machine's own calibration).

    python bench/wall_prediction.py [--preset cpu_demo] [--iterations N] [--repeats 3] [--from probe|run|calibration]

Each repeat, in a fresh NANOLAUNCH_HOME whose data cache is already warm (a rerun, as in practice): probe
the preset (`dry`, 20 steps) or, with `--from run`, run it once, read the plan's predicted wall time
(which now uses that row), run the preset, and compare with the wall time the ledger recorded. With
`--from calibration` the home is wholly fresh, as a new user's: no ledger, no data, no calibration; the
plan calibrates this machine, then the run builds its data. Prints one line per repeat and the median error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def nl(home: Path, *args: str) -> dict | list:
    out = subprocess.run([sys.executable, "-m", "nanolaunch.cli", *args, "--json"], capture_output=True, text=True,
                         env={**os.environ, "NANOLAUNCH_HOME": str(home)}, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu_demo")
    ap.add_argument("--iterations", type=int, help="override the preset's horizon (a longer run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--from", dest="source", choices=("probe", "run", "calibration"), default="probe",
                    help="what the plan predicts from: one probe, one earlier run, or a fresh home's calibration")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nl-wall-"))
    warm = base / "warm"
    if args.source != "calibration":
        nl(warm, "run", "--preset", args.preset, "--local", "--iterations", "2")  # fills the data cache once
    errors = []
    for i in range(args.repeats):
        home = base / f"r{i}"
        if args.source != "calibration":
            shutil.copytree(warm / "cache", home / "cache")
        horizon = ["--iterations", str(args.iterations)] if args.iterations else []
        if args.source == "probe":
            nl(home, "dry", "--preset", args.preset, "--local")
        elif args.source == "run":
            nl(home, "run", "--preset", args.preset, "--local", *horizon)
        plan = nl(home, "plan", "--preset", args.preset, *horizon)
        row = nl(home, "run", "--preset", args.preset, "--local", *horizon)
        predicted, measured = plan["wall_hours"] * 3600, row["wall_seconds"]
        errors.append((predicted - measured) / measured)
        print(f"repeat {i + 1}: predicted {predicted:.1f} s ({plan['mfu_source']}), measured {measured:.1f} s, "
              f"error {100 * errors[-1]:+.1f}%", flush=True)
    print(f"median error {100 * statistics.median(errors):+.1f}% over {len(errors)} runs")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
