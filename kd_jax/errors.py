"""User-facing errors: one exception family, each with its own exit code.

Commands catch `KdJaxError` at the top (see `kd_jax.cli`) and print its message in one or two
lines instead of a traceback; anything else is a bug and keeps its traceback.
"""


class KdJaxError(Exception):
  """A problem the user can fix (bad config, missing data, broken checkpoint)."""

  exit_code = 2
  label = "error"  # Printed before the message: "kd_jax: error: ...".


def one_line(error: BaseException, max_chars: int = 300) -> str:
  """'TypeName: first line of the message', for quoting a library's error inside ours."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:max_chars] if lines else ''}"


class ConfigError(KdJaxError):
  """A configuration value is missing, out of range or of the wrong type."""

  exit_code = 2


class DataError(KdJaxError):
  """MNIST could not be found or read, or its files are malformed."""

  exit_code = 3


class CheckpointError(KdJaxError):
  """A workdir or checkpoint is missing, corrupted or does not match its config."""

  exit_code = 4


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's data cannot be read back as it was written (failed checksum or decoding)."""

  exit_code = 4


class OutOfMemoryError(KdJaxError):
  """The run does not fit in the device's or host's memory."""

  exit_code = 6


class TrainingDivergedError(KdJaxError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""

  exit_code = 5
