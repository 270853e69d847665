"""What the paper teacher's optimizer update costs an epoch on its own, against its matmul floor.

  python scripts/optimizer_cost.py --out results/benchmark/intel_xeon/optimizer_cost_run1.json

The teacher's 2.4 M parameters updated `steps` times in one compiled scan with nothing else: a
pass that only makes each step's gradients (a scaled copy of fixed ones, so XLA cannot hoist the
update out of the loop), then that plus the config's optimizer (Adam), then plus max-norm. The
differences are what the update and the constraint cost inside `kd_jax.benchmark`'s teacher epoch,
whose goal of 1.15x its matmul floor leaves about 0.4 s on a floor of about 2.5 s for all of it.

It also measures that floor (`benchmark.case_floor`, the fastest way the epoch's matrix products
run) and estimates what a float32-state Adam fused into one kernel would cost: the gradients-only
pass moves three parameter-sized arrays a step (reads the fixed gradients and the parameters,
writes the parameters); a fused Adam moves seven (reads gradients, parameters and both moments,
writes the last three), so at that pass's data rate it takes 7/3 of its time (an estimate: time
taken as proportional to bytes moved). `fused_adam_ratio` is (floor + that estimate) / floor, the
epoch with a perfect Adam kernel and nothing else; `with_max_norm_ratio` adds max-norm's measured
cost, which the paper teacher also pays.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import optax

from kd_jax import benchmark, configs, models, reporting, steps


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=468, help="Updates (an MNIST epoch at 128).")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="runs/optimizer_cost.json")
  args = parser.parse_args(argv)
  config = configs.get("paper_teacher")
  model = models.model_from_config(config.model)
  params = models.init_variables(model, jax.random.PRNGKey(0),
                                 tuple(config.model.input_shape))["params"]
  optimizer = steps.make_optimizer(config, args.steps)(config.learning_rate)
  gradients = jax.tree.map(lambda p: p * 0.1 + 1e-3, params)

  def epoch(params, update: bool, max_norm: float):
    def one_step(carry, index):
      params, opt_state = carry
      grads = jax.tree.map(lambda g: g * (1.0 + index.astype(jnp.float32) * 1e-6), gradients)
      if not update:  # The gradients' own pass: what the other two add to.
        return (jax.tree.map(jnp.add, params, grads), opt_state), None
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = models.apply_max_norm(optax.apply_updates(params, updates), max_norm)
      return (params, opt_state), None
    return jax.lax.scan(one_step, (params, optimizer.init(params)), jnp.arange(args.steps))[0]

  seconds = {name: benchmark.time_calls(jax.jit(lambda p, u=update, m=max_norm: epoch(p, u, m)),
                                        (params,), args.repeats)["seconds"]
             for name, update, max_norm in (("gradients only", False, 0.0),
                                            ("optimizer", True, 0.0),
                                            ("optimizer and max-norm", True,
                                             config.model.max_norm))}
  floor = min(benchmark.case_floor(config, None, args.steps, 1, 1, args.repeats).values())
  fused_adam = seconds["gradients only"] * 7 / 3
  max_norm = seconds["optimizer and max-norm"] - seconds["optimizer"]
  results = {"machine": reporting.machine(), "steps": args.steps,
             "parameters": sum(p.size for p in jax.tree.leaves(params)),
             "optimizer": config.get("optimizer", "adam"), "seconds": seconds,
             "floor_s": floor, "fused_adam_estimate_s": fused_adam,
             "fused_adam_ratio": (floor + fused_adam) / floor,
             "with_max_norm_ratio": (floor + fused_adam + max_norm) / floor}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + "\n")
  for name, value in seconds.items():
    print(f"{name:<24} {value:.3f} s per {args.steps} steps")
  print(f"matmul floor {floor:.3f} s; a fused Adam at the gradients-only pass's data rate: about "
        f"{fused_adam:.3f} s ({results['fused_adam_ratio']:.3f}x the floor), with max-norm "
        f"{results['with_max_norm_ratio']:.3f}x")
  return results


if __name__ == "__main__":
  main()
