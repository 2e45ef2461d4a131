"""What LISA's freeing of a leaving layer's optimizer state saves, on the embedded decoder
(SmolLM2-135M chat SFT, bf16 base, fp32 trained weights and AdamW state).

Two sides, each a fresh process running ``hybridft.run`` on ``recipes/chat-sft.yaml`` with
``{name: lisa, layers: 2, every: E}`` and the same seed, batches and steps:

- ``freed``: lisa as it ships (a layer that leaves loses its AdamW moments);
- ``kept``: the same code with ``Lisa.release_state`` made a no-op, so every layer ever drawn keeps
  its moments for the rest of the run (what a LISA that only toggles ``requires_grad`` holds).

Per side: the optimizer state held (counted tensor by tensor at every step, the largest), the
stage's memory at the steps and the process's peak (report.json), and samples/s. A short ``every``
makes the draws visit most of the 30 layers within a few minutes. The sides alternate for
``--repeats`` rounds; the table gives medians. Run it alone on the machine:

    python benchmarks/lisa_memory.py --repeats 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from optimizer_memory import tensor_bytes

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("freed", "kept")


def overrides(args) -> list[str]:
    return ["model.dtype=bfloat16", "seed=1", "stages.0.keep_best=false", "output.save_model=false",
            f"stages.0.select=[{{name: lisa, layers: {args.layers}, every: {args.every}}}]",
            "stages.0.optimizer.lr=5e-5", f"stages.0.max_steps={args.steps}", "stages.0.evaluate_start=false",
            f"data.max_train_samples={args.steps * 8}", "data.max_eval_samples=8"]


def worker(args) -> int:
    """One side in this process: the run, and the most optimizer state it held at a step."""
    import hybridft
    from hybridft.selectors.lisa import Lisa

    if args.worker == "kept":
        Lisa.release_state = staticmethod(lambda optimizer, params: None)
    held = {"state_mib": 0.0}
    draw = Lisa.before_step

    def before_step(self, model, stage):
        draw(self, model, stage)
        state = stage.optimizer.state.values()
        held["state_mib"] = max(held["state_mib"], sum(tensor_bytes(v) for s in state for v in s.values()) / 2**20)

    Lisa.before_step = before_step
    hybridft.run(ROOT / "recipes" / "chat-sft.yaml", args.out, overwrite=True, progress=False,
                 overrides=overrides(args))
    (args.out / "state.json").write_text(json.dumps(held))
    return 0


def measure(args, side: str, out: Path) -> dict:
    subprocess.run([sys.executable, __file__, "--worker", side, "--out", str(out), "--steps", str(args.steps),
                    "--every", str(args.every), "--layers", str(args.layers)], check=True)
    report = json.loads((out / "report.json").read_text())
    stage = report["stages"][0]
    return {"side": side, **json.loads((out / "state.json").read_text()),
            "step_memory_mb": max(stage["step_memory_mb_per_process"]), "peak_memory_mb": report["peak_memory_mb"],
            "samples_per_s": stage["samples_per_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps of 8 conversations")
    p.add_argument("--every", type=int, default=2, help="steps between draws")
    p.add_argument("--layers", type=int, default=2, help="layers at a time")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/lisa-memory"))
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    runs = [measure(args, side, args.runs_dir / f"{side}-{r}") for r in range(args.repeats) for side in SIDES]
    print(f"LISA {args.layers} layers every {args.every} steps, {args.steps} steps of 8, medians of {args.repeats}\n")
    print("| side | optimizer state held (MiB) | memory at the steps (MB) | peak memory (MB) | samples/s |")
    print("|---|---|---|---|---|")
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        cells = [statistics.median(r[k] for r in mine)
                 for k in ("state_mib", "step_memory_mb", "peak_memory_mb", "samples_per_s")]
        print(f"| {side} | {cells[0]:.0f} | {cells[1]:.0f} | {cells[2]:.0f} | {cells[3]:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
