"""Alias: `python -m kd_jax.reproduce` runs `python -m kd_jax.paper.reproduce` (the paper's experiments moved
to kd_jax.paper; this command line keeps working)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("kd_jax.paper.reproduce", run_name="__main__", alter_sys=True)
