"""Alias: `python -m kd_jax.fidelity` runs `python -m kd_jax.paper.fidelity` (the paper's experiments moved
to kd_jax.paper; this command line keeps working)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("kd_jax.paper.fidelity", run_name="__main__", alter_sys=True)
