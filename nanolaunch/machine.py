"""This CPU measured once: what a local plan predicts with when the ledger holds no row of this machine.

Machines differ in what they do fast (bf16 native or emulated, AVX-512 or AVX2), so a figure recorded on
another CPU says little here. The first local plan on a machine times a short probe of the reference preset
(synthetic batches, no data needed) and keeps its FLOP/s and start-up under NANOLAUNCH_HOME/cache/machines/
<key>/ (trainer/hardware.py: the key is the CPU's model, flags, cores and ISA limits). Later plans read it;
once a probe or run of this machine is in the ledger, that is used instead (nanolaunch/calibration.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nanolaunch.errors import NanolaunchError
from trainer import hardware
from trainer.settings import to_env

REFERENCE_PRESET = "cpu_demo"
PROBE_STEPS = 12
FILE = "calibration.json"


class CalibrationError(NanolaunchError):
    pass


def cached() -> dict | None:
    return hardware.read_measurement(hardware.this_cpu(), FILE)


def measurement(calibrate: bool) -> tuple[dict | None, str]:
    """The planner's `measured` dict from this machine's calibration, measuring it first if asked and missing."""
    found = cached()
    if found is None and calibrate:
        found = run_calibration()
    if found is None:
        return None, ""
    measured = {k: found[k] for k in ("tokens_per_second", "flops_per_token", "startup_seconds")}
    return ({**measured, "devices": 1, "mfu": None},
            f"calibration of this machine ({found['device_name']}): {found['probe']}, "
            f"{found['tokens_per_second']:,.0f} tok/s")


def run_calibration() -> dict:
    """Times PROBE_STEPS steps of the reference preset in a fresh trainer process; writes and returns the cache."""
    from nanolaunch import output as out
    from nanolaunch.presets import load

    config = load(REFERENCE_PRESET).config.train
    out.note(f"calibrating this machine once: {PROBE_STEPS} steps of {REFERENCE_PRESET} (cached for later plans)")
    with tempfile.TemporaryDirectory(prefix="nanolaunch-calibration-") as d:
        probe = config.replace(probe=PROBE_STEPS, probe_data="synthetic", run_dir=d, data_dir=d,
                               data="synthetic", resume=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NL_")} | to_env(probe)
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "trainer.train"], env=env, capture_output=True, text=True)
        wall = time.time() - started
        try:
            result = json.loads((Path(d) / "result.json").read_text())
        except (OSError, ValueError):
            result = {}
    if done.returncode or result.get("status") != "ok":
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CalibrationError(f"calibrating this machine failed (exit {done.returncode}): {last}")
    # Start-up as a plan adds it: the process's wall time not spent in steps at the median pace.
    found = {"tokens_per_second": result["tokens_per_second"], "flops_per_token": config.shape.flops_per_token,
             "step_ms": result["step_ms"], "startup_seconds": max(0.0, wall - PROBE_STEPS * result["step_ms"] / 1000),
             "device_name": result.get("device_name"), "machine": result.get("machine"),
             "probe": f"{PROBE_STEPS}-step probe of {REFERENCE_PRESET} d{config.depth} batch {config.device_batch}",
             "measured_at": time.time()}
    hardware.keep_measurement(hardware.this_cpu(), FILE, found)
    return found
