"""Alias: `python -m kd_jax.frontier` runs `python -m kd_jax.paper.frontier` (the paper's experiments moved
to kd_jax.paper; this command line keeps working)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("kd_jax.paper.frontier", run_name="__main__", alter_sys=True)
