"""Process-wide settings the library and its commands share: quiet logs, deterministic kernels.

Kept below both `kd_jax.api` and `kd_jax.cli`, so that neither imports the other for them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from absl import logging

VERBOSE_ENV = "KD_JAX_VERBOSE"  # Set (a command's --debug does): orbax's logs are kept.


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
  """orbax's logs hidden for the duration (our own lines say what happened, and its ERROR pages
  precede an exception that says it in one line), the previous verbosity restored after;
  `KD_JAX_VERBOSE=1` (or a command's --debug) keeps them."""
  if os.environ.get(VERBOSE_ENV):
    yield
    return
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  finally:
    logging.set_verbosity(previous)


def use_deterministic_kernels() -> bool:
  """Asks XLA for deterministic GPU kernels (--xla_gpu_deterministic_ops), so a resumed run
  matches an uninterrupted one on GPUs too (CPU runs are deterministic anyway). The commands do
  this unless --nodeterministic; from Python, call it before the first jax computation. Returns
  False, changing nothing, when jax's backend has already started (too late for the flag)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  # Only when called.
  if xla_bridge.backends_are_initialized():
    return False
  flag = "--xla_gpu_deterministic_ops=true"
  if flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), flag]).strip()
  return True
