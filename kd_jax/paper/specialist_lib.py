"""Specialists for confusable classes (Hinton, Vinyals & Dean 2015, section 5): pure functions.

A generalist is trained on all C classes. Its predicted probabilities on held-out data give a
C x C covariance matrix; k-means on its columns groups classes that are predicted together into
disjoint subsets (`cluster_classes`). Specialist m knows its subset's classes plus one dustbin
class for all others: a population member whose labels are mapped by `class_maps` (an array, so
all specialists train at once in one compiled epoch), whose batches are half its subset and half
the rest (`half_subset_batches`), and whose weights start from the generalist's
(`specialist_params`). Afterwards its dustbin logit is raised by the log of the factor by which
its subset was oversampled (`dustbin_offsets`). At inference `combine` finds, per example, the
distribution q = softmax(z) minimising KL(p_g, q) + sum over active specialists KL(p_m, q), by
gradient descent in JAX, batched over examples.

Specialists have as many outputs as the largest subset plus one. A smaller subset's unused
outputs get a bias of `UNUSED_BIAS`: their probability is 0, so their gradients are exactly 0 and
they stay unused through training (no mask needed in the step or the loss).

`SPECIALISTS` is how a specialist run changes the library's set-up (a kd_jax.extensions hook,
named in the run's `config.extension`): its `class_subsets` and `init_workdir` fields, one member
per subset, the class maps, the loss and sampler, and the start from the generalist.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ml_collections

from kd_jax import (config_fields, config_lib, extensions, losses, parallelism, reporting, rundir,
                    runs, steps)

UNUSED_BIAS = -1e9


# ----------------------------------------------------------------------------- clusters


def prediction_covariance(probabilities: np.ndarray) -> np.ndarray:
  """[N, C] predicted probabilities -> [C, C] covariance of the classes' probabilities."""
  return np.cov(np.asarray(probabilities, np.float64), rowvar=False)


def kmeans(points: np.ndarray, k: int, seed: int, restarts: int = 10,
           iterations: int = 100) -> np.ndarray:
  """Lloyd's k-means with k-means++ starts; the assignment [n] of the restart with the least
  within-cluster sum of squares. Deterministic for a seed."""
  rng = np.random.default_rng(seed)
  best, best_inertia = None, np.inf
  for _ in range(restarts):
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):  # k-means++: far points are likelier starts.
      distances = np.min([np.sum((points - c)**2, axis=1) for c in centres], axis=0)
      total = distances.sum()
      pick = rng.choice(len(points), p=distances / total) if total > 0 else rng.integers(
          len(points))
      centres.append(points[pick])
    centres = np.array(centres)
    for _ in range(iterations):
      assignment = np.argmin(((points[:, None] - centres[None])**2).sum(-1), axis=1)
      moved = np.array([points[assignment == j].mean(0) if np.any(assignment == j) else
                        centres[j] for j in range(k)])
      if np.allclose(moved, centres):
        break
      centres = moved
    inertia = np.sum((points - centres[assignment])**2)
    if inertia < best_inertia:
      best, best_inertia = assignment, inertia
  return best


def cluster_classes(probabilities: np.ndarray, num_clusters: int, min_classes: int = 2,
                    seed: int = 0) -> list[tuple[int, ...]]:
  """Disjoint class subsets that the generalist predicts together, largest first.

  The columns of the prediction covariance are scaled to unit length before k-means: a class's
  own variance dominates its column otherwise, and two classes that share probability mass on the
  same examples (a confusion) have columns pointing the same way. Clusters with fewer than
  `min_classes` classes get no specialist.
  """
  covariance = prediction_covariance(probabilities)
  columns = covariance / np.maximum(np.linalg.norm(covariance, axis=0, keepdims=True), 1e-12)
  assignment = kmeans(columns.T, num_clusters, seed)
  subsets = [tuple(int(c) for c in np.flatnonzero(assignment == j)) for j in range(num_clusters)]
  subsets = [s for s in subsets if len(s) >= min_classes]
  return sorted(subsets, key=lambda s: (-len(s), s))


# ----------------------------------------------------------------------------- class maps


def class_maps(subsets: list[tuple[int, ...]], num_classes: int) -> np.ndarray:
  """[M, C] int32: class c -> its position in subset m, or the dustbin (max subset size)."""
  dustbin = max(len(s) for s in subsets)
  maps = np.full((len(subsets), num_classes), dustbin, np.int32)
  for m, subset in enumerate(subsets):
    maps[m, list(subset)] = np.arange(len(subset))
  return maps


def local_probabilities(probabilities: jax.Array, class_map: jax.Array,
                        num_outputs: int) -> jax.Array:
  """[..., C] probabilities over all classes -> [..., num_outputs] over a specialist's outputs:
  its subset's classes, the dustbin holding all other classes' mass, unused outputs 0."""
  return probabilities @ jax.nn.one_hot(class_map, num_outputs, dtype=probabilities.dtype)


def dustbin_offsets(train_labels: np.ndarray, subsets: list[tuple[int, ...]]) -> np.ndarray:
  """log of each specialist's oversampling factor, added to its dustbin logit after training.

  Training batches are half subset, half rest, where the data hold a fraction f of subset
  examples: the subset's odds against the dustbin are raised by (1 - f) / f. Adding its log to
  the dustbin logit undoes that (the Bayes correction of a changed class prior).
  """
  offsets = []
  for subset in subsets:
    fraction = np.isin(train_labels, subset).mean()
    offsets.append(np.log((1.0 - fraction) / fraction))
  return np.asarray(offsets, np.float32)


# ----------------------------------------------------------------------------- training


def half_subset_batches(dustbin: int):
  """A batch sampler (see `steps.train_epoch`): each batch half from the member's subset, half
  from the rest of the training set, drawn with replacement; an epoch has as many steps as a
  pass over the whole training set."""

  def sampler(key: jax.Array, train_data: dict[str, jax.Array], hparams: dict[str, jax.Array],
              batch_size: int) -> jax.Array:
    labels = train_data["label"]
    num_examples, num_steps = labels.shape[0], labels.shape[0] // batch_size
    in_subset = hparams["class_map"][labels] != dustbin
    subset_first = jnp.argsort(~in_subset, stable=True)
    num_in = jnp.sum(in_subset)
    half = batch_size // 2
    subset_key, rest_key = jax.random.split(key)
    subset_positions = jax.random.randint(subset_key, (num_steps, half), 0, num_in)
    rest_positions = jax.random.randint(rest_key, (num_steps, batch_size - half), num_in,
                                        num_examples)
    return subset_first[jnp.concatenate([subset_positions, rest_positions], axis=1)]

  return sampler


def specialist_loss(base_loss: losses.LossFn, num_outputs: int,
                    soft_targets: bool = False) -> losses.LossFn:
  """`base_loss` on a specialist's outputs: labels mapped by the member's `class_map` (an
  hparam); with `soft_targets`, the generalist's tempered probabilities summed the same way (the
  dustbin gets all other classes' mass). Reports accuracy on the mapped labels."""

  def loss_fn(logits, batch, teacher_logits, hparams):
    class_map = hparams["class_map"]
    labels = class_map[batch["label"]]
    if soft_targets:  # Logits whose softmax at T is the generalist's, summed into the outputs.
      temperature = hparams["temperature"]
      local = local_probabilities(jax.nn.softmax(teacher_logits / temperature), class_map,
                                  num_outputs)
      teacher_logits = temperature * jnp.log(jnp.maximum(local, 1e-30))
    loss, parts = base_loss(logits, {**batch, "label": labels}, teacher_logits, hparams)
    return loss, {**parts, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

  return loss_fn


def specialist_params(generalist: dict[str, Any], subset: tuple[int, ...],
                      num_outputs: int) -> dict[str, Any]:
  """A specialist's starting weights: the generalist's hidden layers; output j < |subset| the
  generalist's output for class subset[j]; the dustbin the mean of the other classes' output
  weights with bias mean + log(number of others) (about their log-sum-exp); unused outputs
  zero weights and `UNUSED_BIAS`."""
  kernel, bias = np.asarray(generalist["output"]["kernel"]), np.asarray(
      generalist["output"]["bias"])
  others = np.setdiff1d(np.arange(kernel.shape[1]), subset)
  new_kernel = np.zeros((kernel.shape[0], num_outputs), kernel.dtype)
  new_bias = np.full((num_outputs,), UNUSED_BIAS, bias.dtype)
  new_kernel[:, :len(subset)], new_bias[:len(subset)] = kernel[:, subset], bias[list(subset)]
  new_kernel[:, -1] = kernel[:, others].mean(axis=1)
  new_bias[-1] = bias[others].mean() + np.log(len(others))
  return {**generalist, "output": {"kernel": jnp.asarray(new_kernel), "bias": jnp.asarray(new_bias)}}


# ----------------------------------------------------------------------------- inference


def active_specialists(generalist_probs: jax.Array, maps: jax.Array, dustbin: int,
                       top_n: int = 1) -> jax.Array:
  """[B, M] bool: specialist m is active when its subset holds one of the generalist's top n."""
  _, top = jax.lax.top_k(generalist_probs, top_n)
  return jnp.any(maps[:, top] != dustbin, axis=-1).T


def combine(generalist_probs: jax.Array, specialist_probs: jax.Array, active: jax.Array,
            maps: jax.Array, num_steps: int = 200, learning_rate: float = 0.5) -> jax.Array:
  """The full distributions q [B, C] minimising KL(p_g, q) + sum_m active[b, m] KL(p_m, q_m).

  generalist_probs [B, C]; specialist_probs [B, M, S] over each specialist's outputs (dustbin
  last); q_m is q summed into specialist m's outputs. q = softmax(z), z starting at log p_g,
  optimised by Adam on the sum over examples (the examples are independent, so this is each
  example's own descent), all in one compiled loop. An example with no active specialist keeps
  p_g exactly (Adam would turn rounding noise in its zero gradient into steps).
  """
  num_outputs = specialist_probs.shape[-1]
  to_local = jax.nn.one_hot(maps, num_outputs)  # [M, C, S]
  weights = active.astype(generalist_probs.dtype)
  cross_entropy = lambda p, log_q: -jnp.sum(jnp.where(p > 0, p * log_q, 0.0), axis=-1)

  def objective(z):
    q = jax.nn.softmax(z)
    general = cross_entropy(generalist_probs, jax.nn.log_softmax(z))
    local_q = jnp.einsum("bc,mcs->bms", q, to_local)
    special = cross_entropy(specialist_probs, jnp.log(jnp.maximum(local_q, 1e-30)))
    return jnp.sum(general + jnp.sum(weights * special, axis=-1))

  optimizer = optax.adam(learning_rate)
  z = jnp.log(jnp.maximum(generalist_probs, 1e-30))

  def step(carry, _):
    z, opt_state = carry
    updates, opt_state = optimizer.update(jax.grad(objective)(z), opt_state)
    return (optax.apply_updates(z, updates), opt_state), None

  (z, _), _ = jax.lax.scan(step, (z, optimizer.init(z)), None, length=num_steps)
  return jnp.where(active.any(axis=1, keepdims=True), jax.nn.softmax(z), generalist_probs)


# ----------------------------------------------------------------------------- the run's hooks


def _validate(config: ml_collections.ConfigDict) -> None:
  check = lambda *args: config_lib.check_field(config, *args)
  check("class_subsets", lambda v: isinstance(v, tuple) and v and all(
      config_fields.is_class_tuple(config, tuple(s)) and s for s in v) and len(
          {c for s in v for c in s}) == sum(len(s) for s in v),
        "a non-empty tuple of disjoint, non-empty tuples of class labels")
  check("init_workdir", lambda v: isinstance(v, str) and v,
        "the workdir of the generalist the specialists start from")
  largest = max(len(s) for s in config.class_subsets)
  check("model.num_classes", lambda v: v == largest + 1,
        f"{largest + 1}: the largest class subset's size plus the dustbin")
  if config_fields.is_distillation(config):
    check("soft_loss", lambda v: v == "soft_cross_entropy",
          "soft_cross_entropy: a specialist's soft targets are probabilities summed into its "
          "classes and dustbin")


def _members(config: ml_collections.ConfigDict,
             members: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The library's members for every class subset in turn, each with its `subset` index."""
  specialists = []
  for subset in range(len(config.class_subsets)):
    for member in members:
      specialists.append({"index": len(specialists), "subset": subset,
                          **{k: v for k, v in member.items() if k != "index"}})
  return specialists


def _hparams(config: ml_collections.ConfigDict,
             members: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Each member's `class_map` [P, C] (`class_maps` of its subset), C the dataset's classes (for
  a dataset kd_jax does not know, those the generalist learnt)."""
  num_classes = (config_fields.dataset_classes(config)
                 or rundir.load_config(config.init_workdir).model.num_classes)
  maps = class_maps([tuple(s) for s in config.class_subsets], num_classes)
  return {"class_map": maps[[m["subset"] for m in members]]}


def _objective(config: ml_collections.ConfigDict, loss_fn: losses.LossFn, sampler,
               hparams: dict[str, Any]):
  dustbin = config.model.num_classes - 1
  return (specialist_loss(loss_fn, config.model.num_classes,
                          soft_targets=config_fields.is_distillation(config)),
          half_subset_batches(dustbin), hparams["class_map"])


def _start_from_generalist(config: ml_collections.ConfigDict, state: steps.TrainState,
                           members: list[dict[str, Any]],
                           mesh: jax.sharding.Mesh) -> steps.TrainState:
  """Specialists' parameters from the generalist in config.init_workdir (its member 0); the
  optimizer state (Adam's zero moments) and keys stay as initialised."""
  generalist = runs.Run.open(config.init_workdir, mesh=mesh)
  reporting.say(f"Specialists start from the generalist in {config.init_workdir} (step "
                f"{generalist.step}).")
  generalist = steps.take_member(generalist.variables["params"], 0)
  params = steps.stack_members([
      specialist_params(generalist, tuple(config.class_subsets[m["subset"]]),
                        config.model.num_classes) for m in members])
  return state.replace(params=jax.device_put(params, parallelism.replicated(mesh)))


SPECIALISTS = extensions.Extension(
    name="specialists", validate=_validate, members=_members, hparams=_hparams,
    objective=_objective, initial_state=_start_from_generalist,
    evaluate_elsewhere=("they predict classes of their own: evaluate them with `python -m "
                        "kd_jax.specialists --workdir ROOT` (its eval.json holds the generalist's "
                        "and the combined accuracy)."))
EXTENSION = f"{__name__}:SPECIALISTS"  # What a specialist run's config.extension names.
