"""Test hooks: KD_JAX_FAULT=ACTION:POINT makes a command crash, or signal itself, at a named point.

Tests of crash safety and signal handling then hit exact moments instead of racing a timer:
  kill:POINT             SIGKILL, as a power cut or the OOM killer would
  signal:POINT           SIGTERM, as a scheduler preempting the job
  signal_group:POINT     SIGTERM to the whole process group (grain's workers too), as SLURM does
  signal_twice:POINT     SIGTERM twice (an impatient scheduler, or Ctrl-C pressed twice)
  signal_and_hang:POINT  SIGTERM, then hang, as a run stuck in a collective would
  oom:POINT              XLA's out-of-memory error
  enospc:POINT           a full disk (OSError ENOSPC) where the point writes
Points: put_data, set_aside:<entry moved>, discard_set_aside, save_config:<file written>,
step_checkpoint:<step> (a checkpoint within an epoch, streamed runs),
write_metrics, write_tensorboard. Unset (always, outside tests): no-op.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

ENV = "KD_JAX_FAULT"


def point(name: str) -> None:
  action, _, where = os.environ.get(ENV, "").partition(":")
  if where != name:
    return
  if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
  elif action == "signal_group":
    os.killpg(os.getpgid(0), signal.SIGTERM)
  elif action in ("signal", "signal_twice", "signal_and_hang"):
    os.kill(os.getpid(), signal.SIGTERM)
    if action == "signal_twice":
      os.kill(os.getpid(), signal.SIGTERM)
    if action == "signal_and_hang":
      threading.Event().wait()
  elif action == "enospc":
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  elif action == "oom":
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.00GiB "
                       "(injected by KD_JAX_FAULT).")
