"""Alias: `python -m kd_jax.specialists` runs `python -m kd_jax.paper.specialists` (the paper's experiments moved
to kd_jax.paper; this command line keeps working)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("kd_jax.paper.specialists", run_name="__main__", alter_sys=True)
