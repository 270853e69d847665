"""Shared fixtures: a tiny learnable MNIST-shaped IDX folder and helpers to run the commands."""

from __future__ import annotations

import importlib.util
import json
import inspect
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from kd_jax import config_lib, configs, data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# One persistent compilation cache for the session, fresh each time, shared by the in-process
# runs, both xdist workers (named by the controlling pytest's pid, the workers' parent) and every
# command the tests start: most tests compile the same tiny programs, and XLA's compile time, not
# training, dominates them. The compiled code is the same, cached or not.
_CONTROLLER = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
_CACHE_DIR = pathlib.Path(tempfile.gettempdir()) / f"kd_jax_xla_cache_{_CONTROLLER}"
_CACHE_DIR.mkdir(exist_ok=True)
COMPILATION_CACHE = {"JAX_COMPILATION_CACHE_DIR": str(_CACHE_DIR),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
os.environ.update(COMPILATION_CACHE)
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# XLA's optimisation passes cost the tests more than they save: on tiny data compiling dominates
# (measured on the 2-core EPYC: the methods study at tiny settings 58 s against 95 s, the fast
# API and training tests 87 s against 144 s). The numbers the tests compare come from runs under
# the same setting, so they hold either way. Tests where training dominates are marked
# `optimized` and start their commands with the passes on; JAX_DISABLE_MOST_OPTIMIZATIONS=false
# runs the whole suite as users run the code.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
jax.config.update("jax_disable_most_optimizations",
                  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("true", "1"))
TINY_OVERRIDES = ["--config.data.check_counts=False", "--config.batch_size=32",
                  "--config.eval_batch_size=40", "--config.num_epochs=2"]


def make_tiny_mnist(num_train: int = 480, num_test: int = 200, seed: int = 0) -> dict:
  """Ten fixed blocky 'digit' prototypes plus noise: learnable in a few steps, like MNIST in form.

  Prototypes are random 7x7 on/off grids blown up to 4x4-pixel cells, so a 2-pixel jitter keeps
  them recognisable, as it does real digits.
  """
  rng = np.random.default_rng(seed)
  prototypes = np.kron(rng.integers(0, 2, size=(10, 7, 7)) * 255, np.ones((4, 4)))
  arrays = {}
  for split, n in (("train", num_train), ("test", num_test)):
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    noise = rng.normal(0, 60, size=(n, 28, 28))
    arrays[f"{split}_images"] = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    arrays[f"{split}_labels"] = labels.astype(np.uint8)
  return arrays


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory) -> pathlib.Path:
  folder = tmp_path_factory.mktemp("tiny_mnist")
  data.write_idx_folder(folder, make_tiny_mnist())
  return folder


def tiny_config(mnist_dir, teacher=None, **overrides):
  """A validated config for the tiny IDX folder, distilling from `teacher` when given; overrides
  name nested fields with '__' (model__hidden_sizes=(32,))."""
  config = config_lib.base_config()
  if teacher is not None:
    config = config_lib.add_distillation(config, temperature=4.0, alpha=0.7)
    config.teacher_workdir = str(teacher)
  config.batch_size = 32
  config.eval_batch_size = 40
  config.data.mnist_dir = str(mnist_dir)
  config.data.check_counts = False
  configs.override(config, **overrides)
  config_lib.validate(config)
  return config


def snapshot(folder: pathlib.Path) -> dict:
  """(mtime, size) of every run file below `folder`: equal snapshots mean nothing was rewritten."""
  return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")
          if p.is_file() and p.name != ".lock"}  # The lock file names its latest holder.


def run_command(module: str, *args: str, mnist_dir: pathlib.Path | str | None = None,
                devices: int = 1, timeout: float = 300, check: bool = True,
                extra_env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs `python -m kd_jax.<module> args` as a user would, on `devices` host CPU devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  if mnist_dir is not None:
    env[data.MNIST_DIR_ENV] = str(mnist_dir)
  env.update(extra_env or {})
  result = subprocess.run([sys.executable, "-m", f"kd_jax.{module}", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"kd_jax.{module} exited {result.returncode}\nstdout:\n"
                         f"{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}")
  return result


def signal_after_epoch(command: list[str], env: dict, epoch: int,
                       signum: int) -> tuple[int, str, str]:
  """Starts `command`, sends `signum` once it has logged `epoch`, and returns (code, out, err)."""
  process = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(env, PYTHONUNBUFFERED="1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in process.stdout:
      if line.startswith(f"epoch {epoch:3d}"):
        process.send_signal(signum)
        break
    stdout, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  return process.returncode, stdout, stderr


@pytest.fixture(scope="session")
def tiny_reproduction(tiny_mnist_dir, tmp_path_factory) -> tuple[pathlib.Path, str]:
  """`kd_jax.reproduce` run to the end with the tiny profile: (root, its stdout). Shared by the
  reproduce, bias-correction, export and frontier tests, which read its runs."""
  root = tmp_path_factory.mktemp("reproduce") / "root"
  result = run_command("reproduce", "--config=configs/reproduce.py:tiny", f"--workdir={root}",
                       mnist_dir=tiny_mnist_dir, timeout=600)
  return root, result.stdout


@pytest.fixture(autouse=True)
def _optimized_commands(request, monkeypatch):
  """A test marked `optimized` starts its commands with XLA's optimisations on (see above)."""
  if request.node.get_closest_marker("optimized"):
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "false")


def pytest_sessionfinish(session, exitstatus):
  """The controlling process removes the cache once every worker has finished."""
  del session, exitstatus
  if os.environ.get("PYTEST_XDIST_WORKER"):
    return
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(COMPILATION_CACHE["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


SHARED_WORKER = {"test_export": "reproduction", "test_reproduce": "reproduction"}


@pytest.hookimpl(tryfirst=True)  # Before xdist reads the groups from the markers.
def pytest_collection_modifyitems(config, items):
  """With pytest-xdist's loadgroup, a group runs on one worker: one group per test file, the
  files that read the tiny reproduction in one group (see pyproject's addopts)."""
  del config
  for item in items:
    module = item.module.__name__.rsplit(".", 1)[-1]
    item.add_marker(pytest.mark.xdist_group(SHARED_WORKER.get(module, module)))


# ----------------------------------------------------------------------------- test tiers
# A test that starts a process (a command, a kill, another device count, a notebook kernel, grain
# workers), itself, through a helper or through a fixture, is marked slow where it is written:
# `pytestmark = pytest.mark.slow` for a whole file, `@pytest.mark.slow` for one test. The fast
# tier is -m "not slow". A test that is not marked slow and starts one fails, in both tiers: while
# its fixtures are set up and while it runs, starting a process raises (and fails the test even
# if the code under test swallows the error), and a fixture that started processes for an
# earlier test fails the unmarked tests that use it too. Quick probes that libraries run on their
# own (`git describe` for a run's code version, fontconfig, ldconfig, uname) are allowed.
ALLOWED_PROGRAMS = {"git", "fc-list", "fc-match", "ldconfig", "ldconfig.real", "uname", "gcc",
                    "cc", "ld", "objdump", "nvidia-smi", "lscpu"}
# The test whose processes are refused (None: allowed), its violations, the fixtures being set
# up (innermost last), and the fixtures seen starting processes.
_tiers = {"test": None, "violations": [], "fixtures": [], "process_fixtures": set()}


def _starting(what: str) -> None:
  """Called before a process starts in this (the test) process."""
  if _tiers["fixtures"]:
    _tiers["process_fixtures"].add(_tiers["fixtures"][-1])
  if _tiers["test"] is None:
    return
  where = f" (in fixture {_tiers['fixtures'][-1].argname!r})" if _tiers["fixtures"] else ""
  message = (f"test {_tiers['test']} starts a process{where}: {what[:200]}. Mark it "
             "@pytest.mark.slow (see docs/testing.md).")
  _tiers["violations"].append(message)
  raise AssertionError(message)


def _install_process_guard() -> None:
  """Every way this process starts another goes through `_starting` first."""
  import multiprocessing.process  # pylint: disable=import-outside-toplevel

  popen_execute = subprocess.Popen._execute_child  # pylint: disable=protected-access
  parameters = list(inspect.signature(popen_execute).parameters)
  shell_at = parameters.index("shell") - 2  # Its index in `rest` below.

  def execute_child(self, args, *rest, **kwargs):
    shell = rest[shell_at] if len(rest) > shell_at else kwargs.get("shell", False)
    executable = rest[0] if rest else kwargs.get("executable")
    if isinstance(args, (str, bytes, os.PathLike)):
      command = os.fsdecode(args)
      words = command.split() if shell else [command]
    else:
      words = [os.fsdecode(arg) for arg in args]
      command = " ".join(words)
    program = os.path.basename(os.fsdecode(executable) if executable and not shell else
                               (words or ["?"])[0])
    if program not in ALLOWED_PROGRAMS:
      _starting(command)
    return popen_execute(self, args, *rest, **kwargs)

  subprocess.Popen._execute_child = execute_child  # pylint: disable=protected-access
  process_start = multiprocessing.process.BaseProcess.start

  def start(self):
    _starting(f"multiprocessing {self!r}")
    return process_start(self)

  multiprocessing.process.BaseProcess.start = start
  for name in ("fork", "forkpty", "system"):  # subprocess uses none of them.
    original = getattr(os, name, None)
    if original is not None:
      def guarded(*args, _original=original, _name=name, **kwargs):
        _starting(f"os.{_name}{args!r}")
        return _original(*args, **kwargs)
      setattr(os, name, guarded)


_install_process_guard()


def _guarding(item) -> None:
  """Before a phase of `item`: its processes are refused unless it is marked slow."""
  _tiers["violations"] = []
  if item.get_closest_marker("slow") is not None:
    _tiers["test"] = None
    return
  _tiers["test"] = item.nodeid
  definitions = getattr(item, "_fixtureinfo", None)
  for name, fixturedefs in (definitions.name2fixturedefs.items() if definitions else ()):
    if fixturedefs and fixturedefs[-1] in _tiers["process_fixtures"]:
      _tiers["test"] = None
      raise AssertionError(f"test {item.nodeid} uses fixture {name!r}, which starts processes: "
                           "mark it @pytest.mark.slow (see docs/testing.md).")


def _guarded():
  """Around a phase of a test (after `_guarding`): a violation fails the phase, also where the
  code under test caught the error or raised another in its place."""
  try:
    result = yield
  except BaseException as error:
    violations, _tiers["test"], _tiers["violations"] = _tiers["violations"], None, []
    if violations and str(error) != violations[0]:
      raise AssertionError(violations[0]) from error
    raise
  violations, _tiers["test"], _tiers["violations"] = _tiers["violations"], None, []
  if violations:
    raise AssertionError(violations[0])
  return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
  _guarding(item)
  return (yield from _guarded())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
  _guarding(item)
  return (yield from _guarded())


class _FixtureTracker:
  """Which fixture is being set up. A plugin of its own: a conftest's hooks see only the fixtures
  of its own folder's nodes, not session-scoped ones such as tiny_reproduction."""

  @pytest.hookimpl(wrapper=True)
  def pytest_fixture_setup(self, fixturedef, request):
    del request
    _tiers["fixtures"].append(fixturedef)
    try:
      return (yield)
    finally:
      _tiers["fixtures"].pop()


def pytest_configure(config):
  config.pluginmanager.register(_FixtureTracker(), "kd_jax_fixture_tracker")


def load_script(name: str):
  """scripts/NAME.py as a module (the scripts are not a package)."""
  spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  return script


def final_digests(workdir: pathlib.Path) -> dict:
  """The digests of a run's newest checkpoint's arrays, by item and path (equal digests: equal
  bits), as its meta recorded them."""
  last = max((p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()),
             key=lambda p: int(p.name))
  return json.loads((last / "meta" / "metadata").read_text())["digests"]
