"""config_fields.FIELDS declares every config field once: the defaults, the checks validate() makes of
each value alone, ADDED_FIELDS and the config reference all come from it."""

import copy
import inspect
import json
import re

import ml_collections
import pytest

from kd_jax import config_fields, config_lib, rundir
from kd_jax.errors import ConfigError
from conftest import load_script

FIELDS = config_fields.FIELDS
CHECKED = [name for name, field in FIELDS.items() if field.check]
# The fields of the first saved runs. Any other field must be declared added=True: a run saved
# before it existed held its default, which loading that run fills in.
FIRST_RUN_FIELDS = {
    "seed", "num_epochs", "batch_size", "learning_rate", "lr_schedule", "eval_batch_size",
    "model.hidden_sizes", "model.input_dropout", "model.hidden_dropout", "model.max_norm",
    "data.mnist_dir", "data.tfds_data_dir", "data.tfds_manual_dir", "data.validation_size",
    "data.jitter", "data.check_counts", "checkpoint.every_epochs", "checkpoint.max_to_keep",
    "teacher_workdir", "temperature", "alpha", "soft_loss"}
UNCHECKED = {"data.mnist_dir", "data.tfds_data_dir", "data.tfds_manual_dir", "data.check_counts",
             "teacher_views_dir"}
# Values of another type than the declared one (and, for tuples, of the wrong elements).
WRONG_TYPE = {int: ["ten", None, True, (1,)], float: ["x", None, True, (0.5,)],
              str: [7, None, True, ("mnist",)], bool: [1, "yes", None],
              tuple: ["x", 5, None, (None,)]}


def _leaves(config: ml_collections.ConfigDict):
  """(dotted name, value) of every field, in the order of the JSON a run saves."""
  order = [name for name, _ in _flat(json.loads(config.to_json_best_effort()))]
  values = dict(_flat(config.to_dict()))
  return [(name, values[name]) for name in order]


def _with(config: dict, name: str, value=None, delete: bool = False) -> ml_collections.ConfigDict:
  """A copy of the plain-dict `config` with `name` set (to a value of any type) or deleted."""
  tree = copy.deepcopy(config)
  *parents, leaf = name.split(".")
  node = tree
  for parent in parents:
    node = node[parent]
  if delete:
    del node[leaf]
  else:
    node[leaf] = value
  return ml_collections.ConfigDict(tree)  # A new ConfigDict: the value keeps its type.


def _flat(tree: dict, prefix: str = ""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _all_checks_apply() -> dict:
  """A valid distillation config (as a plain dict) in which every per-field check applies."""
  config = config_lib.add_distillation(config_lib.base_config())
  config.teacher_workdir = "runs/teacher"
  config.optimizer = "sgd_momentum"  # Its sgd.* fields are checked only then.
  for field in FIELDS.values():
    assert field.when is None or field.when(config), f"{field.name}: pick a config it applies to"
  config_lib.validate(config, require_teacher=True)
  return config.to_dict()


def test_every_field_has_one_entry_in_the_defaults_order():
  base = [name for name, _ in _leaves(config_lib.base_config())]
  full = [name for name, _ in _leaves(config_lib.add_distillation(config_lib.base_config()))]
  assert full == list(FIELDS)  # One entry per field, no entry without a field, and in order.
  assert full[:len(base)] == base
  assert [n for n in full if FIELDS[n].distillation] == full[len(base):]


def test_declared_types_are_the_defaults():
  for name, value in _leaves(config_lib.add_distillation(config_lib.base_config())):
    field = FIELDS[name]
    assert type(field.default) is field.type, name  # pylint: disable=unidiomatic-typecheck
    assert type(value) is field.type and value == field.default, name
    row = next(line for line in load_script("config_reference").reference_markdown().splitlines()
               if line.startswith(f"| `{name}` |"))
    assert f"| {field.type.__name__} |" in row and field.meaning in row


def test_add_distillation_keeps_its_signature_and_sets_t_and_alpha():
  parameters = inspect.signature(config_lib.add_distillation).parameters
  assert (parameters["temperature"].default, parameters["alpha"].default) == (20.0, 0.9)
  config = config_lib.add_distillation(config_lib.base_config(), 4, alpha=0.5)
  assert (config.temperature, config.alpha) == (4, 0.5) and type(config.temperature) is int


def test_unchecked_fields_are_the_known_few():
  assert {name for name, field in FIELDS.items() if not field.check} == UNCHECKED


@pytest.mark.parametrize("name", CHECKED)
def test_each_check_passes_the_default_and_names_the_field_for_a_wrong_type(name):
  field = FIELDS[name]
  ok, expected = field.check
  if name == "teacher_workdir":  # Its default, "", means no teacher: a hard-label run.
    defaults = config_lib.add_distillation(config_lib.base_config())
    config_lib.validate(defaults)
    with pytest.raises(ConfigError, match=r"^config\.teacher_workdir=''"):
      config_lib.validate(defaults, require_teacher=True)
  else:
    assert ok(field.default)
  config = _all_checks_apply()
  for bad in WRONG_TYPE[field.type]:
    assert not ok(bad), (name, bad)
    message = f"config.{name}={bad!r} is invalid: expected {expected}."
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
      config_lib.validate(_with(config, name, bad), require_teacher=True)
  with pytest.raises(ConfigError, match=f"^config\\.{re.escape(name)} is missing"):
    config_lib.validate(_with(config, name, delete=True), require_teacher=True)


@pytest.mark.parametrize("name", [n for n in CHECKED if n.startswith("sgd.") or (
    FIELDS[n].distillation and n != "teacher_workdir")])
def test_conditional_checks_apply_only_where_their_field_is_read(name):
  config = config_lib.add_distillation(config_lib.base_config()).to_dict()  # No teacher, adam.
  config_lib.validate(_with(config, name, "not read"))
  config["teacher_workdir"] = "runs/teacher"
  config["optimizer"] = "sgd_momentum"
  with pytest.raises(ConfigError, match=f"^config\\.{re.escape(name)}="):
    config_lib.validate(_with(config, name, "not read"))


def test_added_fields_come_from_the_table():
  assert config_fields.ADDED_FIELDS == tuple(n for n, f in FIELDS.items() if f.added)
  assert set(FIELDS) - set(config_fields.ADDED_FIELDS) == FIRST_RUN_FIELDS


@pytest.mark.parametrize("distill", [False, True])
def test_a_run_saved_before_the_added_fields_loads_with_their_defaults(distill, tmp_path):
  config = config_lib.base_config()
  if distill:
    config = config_lib.add_distillation(config)
    config.teacher_workdir = "runs/teacher"
  old_run = {n: v for n, v in _leaves(config) if n not in config_fields.ADDED_FIELDS}
  nested = rundir._unflatten(old_run)  # pylint: disable=protected-access
  (tmp_path / rundir.CONFIG_FILE).write_text(json.dumps(nested))
  assert rundir.load_config(tmp_path).to_dict() == config.to_dict()
