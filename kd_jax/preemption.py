"""SIGTERM/SIGINT handling: finish the epoch in flight, checkpoint, stop with `Preempted`.

Schedulers preempt with SIGTERM (SLURM, Kubernetes, TPU maintenance) and users with Ctrl-C (or a
notebook's "interrupt kernel"). Both only set a flag: the training loop checks it between compiled
epochs, saves, and raises `Preempted`.

- In a command (`install`, called when kd_jax is imported by `python -m kd_jax.*`, once the
  interpreter has started) the handlers last for the whole process: a signal during imports, data
  loading or compilation ends the command with exit code EXIT_PREEMPTED at the next check, and a
  job script requeues on that code. A second signal, or no exit within the grace period
  ($KD_JAX_GRACE_S, default 300 s) after the first, ends the process at once with the same code:
  the latest checkpoint stays valid.
- In a library call (`kd_jax.train` from a notebook or script) `PreemptionGuard` installs the
  handlers for that run only and restores the previous ones after it; the flag starts clear for
  every run, a second signal raises KeyboardInterrupt at once, and nothing ends the process.

This module imports nothing heavy, so it can be installed before jax is.
"""

from __future__ import annotations

import os
import signal
import threading

from kd_jax.errors import KdJaxError

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later".
GRACE_ENV = "KD_JAX_GRACE_S"
_received: list[str] = []  # Names of the signals received, in order.
_for_command: list[bool] = []  # [True] once a command installed the handlers for its process.


class Preempted(KdJaxError):
  """Training stopped on a signal after writing a checkpoint; rerun the command to resume."""

  exit_code = EXIT_PREEMPTED
  label = "stopped"


def _exit_now(reason: str) -> None:
  os.write(2, f"kd_jax: stopped: {reason}; exiting now without saving (the latest checkpoint "
              "is intact). Rerun the same command to resume.\n".encode())
  os._exit(EXIT_PREEMPTED)  # pylint: disable=protected-access


def _handle(signum, frame) -> None:
  del frame
  _received.append(signal.Signals(signum).name)
  if len(_received) > 1:
    if not _for_command:  # A library call: stop now, but leave the process to its owner.
      raise KeyboardInterrupt(f"a second signal ({_received[-1]}) during a kd_jax run")
    _exit_now(f"a second signal ({_received[-1]})")
  if not _for_command:
    return
  grace = float(os.environ.get(GRACE_ENV, "300"))
  timer = threading.Timer(grace, _exit_now, args=(f"{_received[0]}, and the run did not stop "
                                                  f"within {grace:g} s ({GRACE_ENV})",))
  timer.daemon = True
  timer.start()


def install() -> None:
  """For a command: turns SIGTERM and SIGINT into the flag `signal_received` reads, for the rest
  of the process (main thread only)."""
  if threading.current_thread() is threading.main_thread():
    _for_command[:] = [True]
    _install_handlers()


def _install_handlers() -> None:
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _handle)


def signal_received() -> str | None:
  """The name of the first signal received since `install`, or None."""
  return _received[0] if _received else None


class PreemptionGuard:
  """The flag, for the training loop. In a command the handlers are already installed; in a
  library call (no command installed them) it installs them for this run with a clear flag, and
  restores the previous handlers and clears the flag on exit, so the next run starts afresh."""

  def __init__(self):
    self._previous = {}

  @property
  def signal_name(self) -> str | None:
    return signal_received()

  def __enter__(self) -> PreemptionGuard:
    if (not _for_command and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is not _handle):
      self._previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
      _received.clear()
      _install_handlers()
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous:
      for signum, handler in self._previous.items():
        signal.signal(signum, handler)
      _received.clear()

  def requested(self) -> bool:
    """True on every process as soon as any process got a signal (so all save together)."""
    import jax  # pylint: disable=g-import-not-at-top
    local = signal_received() is not None
    if jax.process_count() == 1:
      return local
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.array(local))))
