"""What every command shares: flags, config validation and turning user errors into messages."""

from __future__ import annotations

import logging as std_logging
import os
import sys
import threading
import traceback
from typing import Any, Callable, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from kd_jax import configs, parallelism, preemption, runtime
from kd_jax.errors import ConfigError, KdJaxError, OutOfMemoryError, one_line

flags.DEFINE_bool("debug", False, "Show full Python tracebacks for user errors.")
OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Training commands: replace a run with a different config, data or "
    "teacher in --workdir, once every check has passed (without it such a workdir is refused); "
    "export: replace an existing --out.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", os.environ.get("KD_JAX_DISTRIBUTED", "") not in ("", "0"),
    "Join a multi-process run with jax.distributed.initialize() (default from "
    "$KD_JAX_DISTRIBUTED). Without the flags below JAX detects SLURM, TPU pods, MPI itself.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (implies --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", True, "Deterministic GPU kernels (XLA's --xla_gpu_deterministic_ops), so "
    "the same config and seed give the same numbers and a resumed run matches an uninterrupted "
    "one. CPU runs are deterministic either way; --nodeterministic may be faster on GPUs.")
FLAGS = flags.FLAGS


def _fail(error: KdJaxError) -> None:
  """Prints the error as one line and exits with its code; --debug adds the traceback."""
  debug = "--debug" in sys.argv or (FLAGS.is_parsed() and FLAGS.debug)
  message = f"kd_jax: {error.label}: {error}\n"
  if debug:
    traceback.print_exc()
    print(message, end="", file=sys.stderr, flush=True)
  else:
    # A failed orbax restore can leave tensorstore threads that print tracebacks, even while this
    # message is being written; stderr goes to /dev/null first, so the message is all that shows.
    sys.stderr.flush()
    original_stderr = os.dup(sys.stderr.fileno())
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    os.write(original_stderr, message.encode())
  sys.exit(error.exit_code)


def define_config(name: str, default: str | None, help_text: str) -> flags.FlagHolder:
  """A config flag that takes a shipped config's name (`teacher`, `reproduce:tiny`) or a file
  (`path/to/file.py[:ARG]`); fields are overridden with --NAME.FIELD=VALUE."""
  return config_flags.DEFINE_config_file(
      name, None if default is None else configs.resolve(default),
      f"{help_text} A shipped config's name ({', '.join(configs.names())}) or a config file.",
      lock_config=True)


def _resolve_config_names(argv: list[str], names: Sequence[str]) -> list[str]:
  """argv with `--NAME=VALUE` / `--NAME VALUE` of the config flags resolved by `configs.resolve`."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    for name in names:
      if arg.startswith(f"--{name}="):
        argv[i] = f"--{name}={configs.resolve(arg.split('=', 1)[1])}"
      elif arg == f"--{name}" and i + 1 < len(argv):
        argv[i + 1] = configs.resolve(argv[i + 1])
  return argv


def _flags_parser(config_holders: Sequence[flags.FlagHolder]) -> Callable[[list[str]], list[str]]:
  """Parses flags and loads the config files now, so a typo is one line, not a traceback."""

  def parse(argv: list[str]) -> list[str]:
    try:
      remaining = FLAGS(_resolve_config_names(argv, [h.name for h in config_holders]))
      for holder in config_holders:
        if holder.value is not None:  # None: an optional config file left out.
          holder.value.keys()  # Raises here if the file failed to load.
      return remaining
    except flags.Error as e:
      _fail(ConfigError(f"{str(e).rstrip('.')}. See --helpshort."))
    except (AttributeError, KeyError, OSError, SyntaxError, TypeError, ValueError) as e:
      detail = str(e).strip().strip("\"'").splitlines()
      _fail(ConfigError(f"bad config file or override: {type(e).__name__}: "
                        f"{' '.join(line.strip() for line in detail)[:400]}. Config fields are "
                        "those of the file's get_config(); see --helpfull."))
    return []

  return parse


def _drop_closed_loop_callbacks(unraisable) -> None:
  """sys.unraisablehook that drops tensorstore's late read callbacks after orbax closed its loop.

  When one array of a restore fails, orbax closes its asyncio loop while tensorstore's other
  reads are still in flight; as they finish, their callbacks' `call_soon_threadsafe` raises
  "Event loop is closed", which tensorstore reports as unraisable (a bare traceback on stderr,
  seen racing the one-line message in about 1 of 7 runs). Everything else reaches the default.
  """
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
    sys.__unraisablehook__(unraisable)


def run(main: Callable[[list[str]], None],
        config_holders: Sequence[flags.FlagHolder] = ()) -> None:
  """absl's app.run, with KdJaxError printed as one line and its own exit code."""

  def main_with_clear_errors(argv):
    if not FLAGS.debug and not FLAGS["verbosity"].present:
      # orbax logs every file it writes at INFO, notices at WARNING and, before an error we
      # report in one line anyway, pages of ERROR lines; ours are printed.
      logging.set_verbosity(logging.FATAL)
    if FLAGS.debug or FLAGS["verbosity"].present:
      os.environ[runtime.VERBOSE_ENV] = "1"  # Library calls inside the command keep the logs too.
    if not FLAGS.debug:
      # A failed orbax/tensorstore read leaves worker threads and asyncio tasks that print their
      # own tracebacks, racing our one-line message; the error reaches us through the main
      # thread anyway. --debug shows them.
      threading.excepthook = lambda args: None
      sys.unraisablehook = _drop_closed_loop_callbacks
      std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
    if _DETERMINISTIC.value:  # Read by XLA when the backend starts, which has not happened yet.
      runtime.use_deterministic_kernels()

    def initialized_main():
      if _DISTRIBUTED.value or _COORDINATOR.value:
        parallelism.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                           _PROCESS_ID.value)
      main(argv)

    _with_clear_errors(initialized_main)

  preemption.install()  # Before flags and configs are read (kd_jax's import did it for -m).
  app.run(main_with_clear_errors, flags_parser=_flags_parser(config_holders))


def run_script(main: Callable[[], Any]) -> None:
  """A study script's `__main__` (argparse, not absl): a command's signal handling and errors
  without its flags. SIGTERM/SIGINT stop the stage in flight with a checkpoint (and any later
  stage before it starts), and a KdJaxError, Preempted included, prints as one line and exits
  with its code (75 for a stop: rerun to resume)."""
  preemption.install()
  _with_clear_errors(main)


def _with_clear_errors(main: Callable[[], Any]) -> None:
  """Runs `main`, turning KdJaxError and out-of-memory into one line and an exit code, and a
  signal `main` outlived into Preempted's code."""
  try:
    main()
  except KdJaxError as e:
    _fail(e)
  except (MemoryError, RuntimeError) as e:  # XLA's allocation failures are RuntimeErrors.
    if not isinstance(e, MemoryError) and "RESOURCE_EXHAUSTED" not in str(e):
      raise
    _fail(OutOfMemoryError(f"out of memory ({one_line(e, 200)}). Lower batch_size, "
                           "eval_batch_size, members or member_batch, or use a larger device."))
  if preemption.signal_received():  # A signal the work outlived: still tell the scheduler.
    _fail(preemption.Preempted(f"{preemption.signal_received()} during the command, which "
                               "finished its work first. Nothing is lost."))
