"""What every command shares: flags, config validation and turning user errors into messages."""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from absl import app, flags, logging

from kd_jax.errors import KdJaxError

flags.DEFINE_bool("debug", False, "Show full Python tracebacks for user errors.")
OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Training commands: delete a previous run with a different config in "
    "--workdir and start afresh (without it such a workdir is refused).")
FLAGS = flags.FLAGS


def run(main: Callable[[list[str]], None]) -> None:
  """absl's app.run, with KdJaxError printed as one line and its own exit code."""

  def main_with_clear_errors(argv):
    if not FLAGS.debug and not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO.
    try:
      main(argv)
    except KdJaxError as e:
      if FLAGS.debug:
        traceback.print_exc()
      print(f"kd_jax: {e.label}: {e}", file=sys.stderr, flush=True)
      sys.exit(e.exit_code)

  app.run(main_with_clear_errors)
