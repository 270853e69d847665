"""The registry CNN's epoch against the same network in a plain PyTorch loop, alternated in one run.

  KD_JAX_MNIST_DIR=/path/to/mnist python scripts/cnn_speed.py --torch_python /path/to/venv/bin/python \
      --out results/cnn_speed

(PyTorch's CPU build: `pip install torch --index-url https://download.pytorch.org/whl/cpu`; plain
`pip install torch` pulls the CUDA wheels. Where only a local wheel is reachable, install that.)

Each round trains `python -m kd_jax.train --config student --config.model.name=cnn
--config.model.hidden_sizes='(256,)'` for --epochs epochs, then `scripts/torch_cnn_twin.py` (its
twin: same layers, Adam, batch 128, in-memory data; PyTorch is not a kd_jax dependency, so it runs
under --torch_python), and the ratio of their median epoch times is that round's; --rounds rounds
give the spread. Then a user's convnet written with flax's nn.Conv (`kd_jax.benchmark:UserConvNet`,
the same network) for one epoch under each epoch driver: what `data.epoch_driver=auto` saves it.
Writes OUT/results.json and OUT/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

from kd_jax import reporting

REPO = pathlib.Path(__file__).resolve().parents[1]
CNN = ["--config=configs/student.py", "--config.model.name=cnn", "--config.model.hidden_sizes=(256,)"]
USER = ["--config=configs/student.py", "--config.model.name=kd_jax.benchmark:UserConvNet"]


def kd_jax_epochs(args: list[str], epochs: int, workdir: pathlib.Path) -> list[float]:
  """Epoch times (compilation excluded) of a kd_jax training run, from its metrics.jsonl."""
  subprocess.run([sys.executable, "-m", "kd_jax.train", *args, f"--config.num_epochs={epochs}",
                  f"--workdir={workdir}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [record["epoch_time_s"] for record in records]


def torch_epochs(torch_python: str, epochs: int) -> tuple[list[float], str]:
  lines = subprocess.run([torch_python, str(REPO / "scripts" / "torch_cnn_twin.py"),
                          f"--epochs={epochs}"], check=True, capture_output=True,
                         text=True).stdout.splitlines()
  records = [json.loads(line) for line in lines if '"epoch"' in line]
  return [r["epoch_time_s"] for r in records], records[0]["torch"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--torch_python", required=True)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--out", default="results/cnn_speed")
  args = parser.parse_args()
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="cnn_speed_"))
  rounds = []
  for index in range(args.rounds):
    ours = kd_jax_epochs(CNN, args.epochs, scratch / f"cnn_{index}")  # A fresh run each round.
    theirs, torch_version = torch_epochs(args.torch_python, args.epochs)
    rounds.append({"kd_jax_epoch_s": ours, "torch_epoch_s": theirs,
                   "ratio": statistics.median(ours) / statistics.median(theirs)})
    print(f"round {index + 1}: kd_jax {statistics.median(ours):.2f}s, PyTorch "
          f"{statistics.median(theirs):.2f}s per epoch: {rounds[-1]['ratio']:.2f}x", flush=True)
  user = {driver: kd_jax_epochs([*USER, f"--config.data.epoch_driver={driver}"], 1,
                                scratch / f"user_{driver}")[0] for driver in ("steps", "scan")}
  print(f"user convnet (nn.Conv): {user['steps']:.1f}s per epoch stepped, {user['scan']:.1f}s "
        "scanned", flush=True)
  ratios = [r["ratio"] for r in rounds]
  results = {"machine": reporting.machine(), "code_version": reporting.code_version(),
             "torch": torch_version, "epochs_per_round": args.epochs, "rounds": rounds,
             "ratio_range": [min(ratios), max(ratios)],
             "user_convnet_epoch_s": user, "user_convnet_scan_over_steps": user["scan"] / user["steps"]}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  machine = results["machine"]
  rows = "\n".join(
      f"| {i + 1} | {statistics.median(r['kd_jax_epoch_s']):.2f} | "
      f"{statistics.median(r['torch_epoch_s']):.2f} | {r['ratio']:.2f} |"
      for i, r in enumerate(rounds))
  (out / "RESULTS.md").write_text(f"""# The registry CNN against its PyTorch twin

{reporting.describe_machine(machine)}, PyTorch {torch_version} (CPU build);
kd_jax {results['code_version']}.
Written by `scripts/cnn_speed.py`.

The network: conv 16-32 3x3, BatchNorm, ReLU, 2x2 max-pool, dense 256, 10 logits; Adam, batch 128,
468 steps per epoch. kd_jax: `python -m kd_jax.train --config student --config.model.name=cnn
--config.model.hidden_sizes='(256,)'` (its epoch time excludes compilation); PyTorch:
`scripts/torch_cnn_twin.py`. Median epoch of {args.epochs} in each round; rounds alternate.

| round | kd_jax s/epoch | PyTorch s/epoch | kd_jax / PyTorch |
|---|---|---|---|
{rows}

kd_jax / PyTorch: {min(ratios):.2f}-{max(ratios):.2f} over {len(rounds)} rounds.

A user's convnet written with flax's `nn.Conv` and `nn.max_pool` (`kd_jax.benchmark:UserConvNet`,
the same network), one epoch each: {user['steps']:.1f} s on the stepped driver (what
`data.epoch_driver=auto` picks for it on a CPU), {user['scan']:.1f} s scanned
({user['scan'] / user['steps']:.1f}x).
""")
  print(f"Written: {out}")


if __name__ == "__main__":
  main()
