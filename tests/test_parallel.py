"""1 device, 8 sharded devices and 8 pmap devices give the same training step.

Runs in a subprocess so that XLA can be given 8 host devices without touching this session.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # Every test here starts processes (see conftest.py).

SCRIPT = r"""
import functools, json
import jax, jax.numpy as jnp, numpy as np, optax
from kd_jax import data, losses, models, parallelism, steps, targets
from conftest import make_tiny_mnist

assert jax.device_count() == 8
arrays = make_tiny_mnist(96, 10)
images = jnp.asarray(arrays["train_images"])
labels = jnp.asarray(arrays["train_labels"], jnp.int32)
HPARAMS = {'learning_rate': 1e-2}
# Parameters differ between runs unless every device computes the same global step.
def max_diff(a, b):
  pairs = zip(jax.device_get(jax.tree.leaves(a)), jax.device_get(jax.tree.leaves(b)))
  return max(float(np.abs(x - y).max()) for x, y in pairs)

def sharded_epoch(model, num_devices, max_norm=None, optimizer=optax.adam):
  mesh = parallelism.make_mesh(jax.devices()[:num_devices])
  rep = parallelism.replicated(mesh)
  step_fn = functools.partial(steps.train_step, model=model, optimizer=optimizer,
                              max_norm=max_norm)
  epoch = jax.jit(functools.partial(steps.train_epoch, step_fn=step_fn, batch_size=32,
                                    max_shift=2, batch_sharding=parallelism.batch_sharded(mesh)),
                  out_shardings=rep)
  state = jax.device_put(steps.create_train_state(jax.random.PRNGKey(0), model, optimizer(1.0)),
                         rep)
  train_data = {"image": jax.device_put(images, rep), "label": jax.device_put(labels, rep)}
  state, _ = epoch(state, train_data, HPARAMS, None, jnp.int32(0))
  return state

results = {}
# With dropout and jitter: keys are drawn for the global batch, so sharding does not change them.
teacher = models.MLP((64, 64), input_dropout=0.2, hidden_dropout=0.5)
one, eight = sharded_epoch(teacher, 1, 2.0), sharded_epoch(teacher, 8, 2.0)
results["sharded_vs_single_dropout"] = max_diff(one.params, eight.params)
results["moved"] = max_diff(one.params, steps.create_train_state(
    jax.random.PRNGKey(0), teacher, optax.adam(1.0)).params)

# Feature terms (FitNets with its adapter, RKD over the batch's relations) with the teacher in the
# step: the global batch's features, whatever the sharding.
def sharded_distillation(num_devices):
  mesh = parallelism.make_mesh(jax.devices()[:num_devices])
  rep = parallelism.replicated(mesh)
  teacher_model, student = models.MLP((64, 64)), models.MLP((32, 32))
  teacher_variables = jax.tree.map(lambda x: x[None], {"params": steps.create_train_state(
      jax.random.PRNGKey(1), teacher_model, optax.sgd(1.0)).params})
  paths = ("hidden_0", "hidden_1")
  loss_fn = losses.make_distillation_loss(
      terms=("fitnets", "rkd"), feature_pairs={"fitnets": (paths[:1] * 2,),
                                               "rkd": (paths[1:] * 2,)})
  step_fn = functools.partial(steps.train_step, model=student, optimizer=optax.sgd,
                              loss_fn=loss_fn, feature_paths=paths,
                              targets_fn=targets.make_teacher_targets(teacher_model, None, paths))
  epoch = jax.jit(functools.partial(steps.train_epoch, step_fn=step_fn, batch_size=32,
                                    max_shift=2, batch_sharding=parallelism.batch_sharded(mesh)),
                  out_shardings=rep)
  fresh = steps.create_train_state(jax.random.PRNGKey(0), student, optax.sgd(1.0),
                                   adapter_shapes={"fitnets_0": (32, 64)})
  hparams = {"learning_rate": 0.01, "temperature": 4.0, "alpha": 0.5,
             "terms.fitnets.weight": 0.1, "terms.rkd.weight": 1.0,
             "terms.rkd.distance_weight": 25.0, "terms.rkd.angle_weight": 50.0}
  train_data = {"image": jax.device_put(images, rep), "label": jax.device_put(labels, rep)}
  state, _ = epoch(jax.device_put(fresh, rep), train_data, hparams,
                   jax.device_put(teacher_variables, rep), jnp.int32(0))
  return fresh, state

fresh, one = sharded_distillation(1)
_, eight = sharded_distillation(8)
results["features_sharded_vs_single"] = max_diff((one.params, one.adapters),
                                                 (eight.params, eight.adapters))
results["adapters_moved"] = max_diff(one.adapters, fresh.adapters)

# pmap with axis_name: same batches, gradients averaged with lax.pmean. Plain SGD here: Adam's
# m / sqrt(v) turns rounding noise in near-zero gradients into full-size steps.
model = models.MLP((64, 64))
single = sharded_epoch(model, 1, optimizer=optax.sgd)
state = steps.create_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1))
order_key, jitter_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, 0), 3)
indices = data.epoch_batch_indices(order_key, images.shape[0], 32)
pstep = jax.pmap(functools.partial(steps.train_step, model=model, optimizer=optax.sgd,
                                   axis_name="batch"), axis_name="batch", in_axes=(0, 0, None, None))
pstate = jax.tree.map(lambda x: jnp.stack([x] * 8), state)
for i in range(indices.shape[0]):
  batch_images = data.jitter(jax.random.fold_in(jitter_key, i), images[indices[i]], 2)
  batch = {"image": data.normalize(batch_images), "label": labels[indices[i]]}
  batch = jax.tree.map(lambda x: x.reshape((8, -1) + x.shape[1:]), batch)
  pstate, metrics = pstep(pstate, batch, jax.random.fold_in(dropout_key, i), HPARAMS)
results["pmap_vs_single"] = max_diff(jax.tree.map(lambda x: x[0], pstate.params), single.params)
results["pmap_replicas_agree"] = max_diff(jax.tree.map(lambda x: x[0], pstate.params),
                                          jax.tree.map(lambda x: x[7], pstate.params))
print(json.dumps(results))
"""


def test_single_sharded_and_pmap_steps_agree():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT / "tests"))
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr[-4000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  assert diffs["moved"] > 1e-2  # Training changed the parameters, so agreement means something.
  assert diffs["sharded_vs_single_dropout"] < 1e-5, diffs
  assert diffs["pmap_vs_single"] < 1e-5, diffs
  assert diffs["pmap_replicas_agree"] == 0.0, diffs
  assert diffs["adapters_moved"] > 1e-3 and diffs["features_sharded_vs_single"] < 1e-5, diffs
