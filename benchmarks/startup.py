"""Time to the first image: `vdvae sample -n 1 -o one.png` against `python -c "import torch"`.

For each model family (VDVAE: the shipped fashion32; NVAE: the nvae-small32 preset with random
weights, 0.24M parameters, written to a temporary file) it times, in fresh processes and in
interleaved rounds (a busy neighbour slows every variant alike):

* ``import torch``    ``python -c "import torch"``, the floor every command stands on;
* ``cli``             the real command, ``python -m vdvae_cli sample -n 1 --seed 0 -o one.png``, whole process;
* phases              the same work in a child that reports where its time goes: ``torch`` (import
                      torch), ``imports`` (the rest of what sample imports), ``load`` (the model, as
                      the CLI loads it), ``batch`` (the first sample), ``write`` (the PNG), and
                      ``interpreter`` (the process's wall time outside those: Python's start and exit).

Each figure is the minimum over the rounds (the least disturbed run; the median is printed too).

    python benchmarks/startup.py --rounds 7 --json benchmarks/startup-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

CHILD = r"""
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import sys
from vdvae_cli.cli._run import Session, plan_images
from vdvae_cli.cli.generate import resolve_temperatures
from vdvae_cli.engine import ops
from vdvae_cli.base.images import numbered_names
t2 = time.perf_counter()
model, out = sys.argv[1], sys.argv[2]
writer = plan_images(out, numbered_names("sample", 1), force=True)
run = Session(quiet=True)
vae = run.load_model(model, "cpu")
t3 = time.perf_counter()
_, temps, pixel = resolve_temperatures(None, None, vae)
images = ops.sample(vae, 1, temperatures=temps, output_temperature=pixel, noise=run.noise(0, [0])).cpu().numpy()
t4 = time.perf_counter()
writer.write([0], images)
writer.finish()
t5 = time.perf_counter()
print("PHASES", t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0, flush=True)
"""

PHASES = ("torch", "imports", "load", "batch", "write")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("VDVAE_DEVICE", "cpu")
    return env


def _wall(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    return took, done.stdout


def _nvae_model(folder: Path) -> Path:
    """nvae-small32 with random weights (the architecture `vdvae train --config nvae-small32` trains)."""
    code = (
        "import sys, torch\n"
        "from vdvae_cli.engine.registry import family_named\n"
        "from vdvae_cli.modelfiles.checkpoint import save_checkpoint\n"
        "fam = family_named('nvae')\n"
        "images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))\n"
        "cfg = fam.preset_config('nvae-small32', images, run_name='nvae-small32')\n"
        "torch.manual_seed(0)\n"
        "save_checkpoint(fam.network(cfg), cfg, sys.argv[1])\n"
    )
    path = folder / "nvae-small32.safetensors"
    subprocess.run([sys.executable, "-c", code, str(path)], env=_env(), check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {"vdvae (fashion32)": "fashion32", "nvae (nvae-small32)": str(_nvae_model(work))}
        torch_s: list[float] = []
        cli: dict[str, list[float]] = {name: [] for name in models}
        phases: dict[str, list[list[float]]] = {name: [] for name in models}
        for r in range(args.rounds):
            torch_s.append(_wall([sys.executable, "-c", "import torch"], work)[0])
            for name, ref in models.items():
                out = work / f"one-{r}.png"
                cli[name].append(_wall([sys.executable, "-m", "vdvae_cli", "sample", "-n", "1", "--seed", "0",
                                        "--model", ref, "-o", str(out), "--force", "-q"], work)[0])
                wall, text = _wall([sys.executable, "-c", CHILD, ref, str(work / f"child-{r}.png")], work)
                numbers = [float(x) for x in text.split("PHASES", 1)[1].split()]
                phases[name].append([*numbers[:5], wall - numbers[5], wall])

    floor = min(torch_s)
    rows = []
    print(f"python -c 'import torch': {floor:.2f} s (min of {args.rounds}; median {statistics.median(torch_s):.2f} s)")
    for name in models:
        best = min(phases[name], key=lambda row: row[-1])
        row = {"model": name, "import_torch_s": round(floor, 3), "cli_s": round(min(cli[name]), 3),
               "cli_median_s": round(statistics.median(cli[name]), 3),
               "cli_above_import_torch_s": round(min(cli[name]) - floor, 3),
               **{f"{p}_s": round(v, 3) for p, v in zip((*PHASES, "interpreter"), best[:6])}}
        rows.append(row)
        print(f"{name}: vdvae sample -n 1 {row['cli_s']:.2f} s (median {row['cli_median_s']:.2f}), "
              f"{row['cli_above_import_torch_s']:+.2f} s above import torch; phases of the fastest child: "
              + ", ".join(f"{p} {row[f'{p}_s']:.2f}" for p in (*PHASES, "interpreter")))
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
