"""Alias: `python -m kd_jax.data.prepare` runs `python -m kd_jax.prepare` (the command moved beside
the other commands; this command line keeps working)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("kd_jax.prepare", run_name="__main__", alter_sys=True)
