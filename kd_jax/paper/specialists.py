"""A generalist plus specialists for confusable classes (paper section 5), from one command.

  python -m kd_jax.specialists --config configs/specialists.py --workdir RUN

Stages, each resumable (a killed command reruns to carry on where it stopped):
  RUN/generalist/       an ordinary run on all classes (config.generalist)
  RUN/clusters.json     disjoint class subsets from the generalist's validation predictions
  RUN/specialists/      one population member per subset, trained together (and with
                        config.soft_targets also RUN/specialists_soft/, fitting the generalist's
                        soft targets as well, to see whether that helps)
  RUN/eval.json         generalist and combined test accuracy, accuracy by how many active
                        specialists cover the true class; RUN/RESULTS.md the same as tables.
The pure parts (clustering, class maps, the KL combination) are in `kd_jax.paper.specialist_lib`.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from kd_jax import checkpointing, cli, config_lib, data, parallelism, reporting, rundir, runs
from kd_jax.paper import bias_correction, specialist_lib, stages
from kd_jax.errors import ConfigError

# The paper's own figures (JFT, section 5), typed in; everything else is measured.
PAPER = {"dataset": "JFT (15,000 classes, 100M images)", "num_specialists": 61,
         "generalist_top1": 0.250, "combined_top1": 0.261,
         "by_coverage": "Relative accuracy gains grow with the number of specialists covering the "
                        "correct class (Table 4)."}
# Compiled once per shape and setting: a fresh jax.jit per call would recompile for every
# dustbin rule, top n and variant.
_combine = jax.jit(specialist_lib.combine, static_argnames=("num_steps", "learning_rate"))
# How a specialist's dustbin logit is raised after training: by the log of its oversampling
# factor (the paper's rule), by the offset that suits it best on the validation split, or not.
OFFSET_RULES = ("oversampling", "validation", "none")


def define_flags() -> flags.FlagHolder:
  """The command's flags (only when run as a command: importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "Root folder of the stages.", required=True)
  return cli.define_config("config", "specialists", "Specialists config.")


def validate(config: ml_collections.ConfigDict) -> None:
  config_lib.validate(config.generalist)
  if config.generalist.data.validation_size <= 0 or (
      config.generalist.data.name == "mnist_pairs"
      and config.generalist.data.pairs.num_validation <= 0):
    raise ConfigError("config.generalist needs a validation split (data.validation_size > 0, "
                      "and for mnist_pairs data.pairs.num_validation > 0): the clusters come "
                      "from the generalist's predictions on held-out data.")
  for name, low in (("num_clusters", 1), ("min_classes", 1), ("specialist_epochs", 1),
                    ("top_n", 1), ("combine_steps", 1)):
    if not isinstance(config[name], int) or config[name] < low:
      raise ConfigError(f"config.{name}={config[name]!r} is invalid: expected an integer >= {low}.")
  if config.dustbin_offset not in OFFSET_RULES:
    raise ConfigError(f"config.dustbin_offset={config.dustbin_offset!r} is invalid: expected one "
                      f"of {OFFSET_RULES}.")
  if not all(isinstance(n, int) and n >= 1 for n in config.top_n_sweep):
    raise ConfigError(f"config.top_n_sweep={config.top_n_sweep!r} is invalid: expected a tuple "
                      "of integers >= 1.")


def specialist_config(config: ml_collections.ConfigDict, root: pathlib.Path,
                      subsets: list[tuple[int, ...]], soft_targets: bool) -> ml_collections.ConfigDict:
  """The specialists' run: the generalist's config with the subsets, its own epochs and rate,
  and (with soft targets) the generalist as teacher."""
  run = config.generalist.copy_and_resolve_references()
  run.unlock()
  run.extension = specialist_lib.EXTENSION
  run.class_subsets = tuple(tuple(s) for s in subsets)
  run.init_workdir = str(root / "generalist")
  run.model.num_classes = max(len(s) for s in subsets) + 1
  run.num_epochs = config.specialist_epochs
  run.learning_rate = config.specialist_learning_rate
  if soft_targets:
    config_lib.add_distillation(run, config.temperature, config.alpha)
    run.teacher_workdir = str(root / "generalist")
  config_lib.validate(run)
  return run


def find_clusters(config: ml_collections.ConfigDict, root: pathlib.Path, splits: data.Splits,
                  mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """RUN/clusters.json, made from the generalist's latest checkpoint, or read back when it was
  made from that checkpoint with the same settings."""
  generalist = root / "generalist"
  step = checkpointing.finished_step(generalist, config.generalist)
  settings = {"generalist_step": step, "num_clusters": config.num_clusters,
              "min_classes": config.min_classes, "seed": config.cluster_seed}
  path = root / "clusters.json"
  if path.exists():
    saved = json.loads(path.read_text())
    if {k: saved.get(k) for k in settings} == settings:
      return saved
  logits = np.asarray(runs.Run.open(generalist, mesh=mesh).logits(splits.validation_images))[:, 0]
  subsets = specialist_lib.cluster_classes(np.asarray(jax.nn.softmax(logits)),
                                           config.num_clusters, config.min_classes,
                                           config.cluster_seed)
  if not subsets:
    raise ConfigError(f"No cluster has {config.min_classes} or more classes: lower "
                      "config.min_classes or config.num_clusters.")
  clusters = {**settings, "subsets": [list(s) for s in subsets],
              "dustbin_offsets": specialist_lib.dustbin_offsets(splits.train_labels,
                                                                subsets).tolist()}
  reporting.write_json(path, clusters)
  return clusters


def coverage_table(covering: np.ndarray, generalist_right: np.ndarray,
                   combined_right: np.ndarray) -> list[dict[str, Any]]:
  """The layout of the paper's Table 4: per number of active specialists covering the true
  class, the examples, how many more the combination gets right, and the relative change."""
  rows = []
  for count in range(int(covering.max(initial=0)) + 1):
    rows_of = covering == count
    if not rows_of.any():
      continue
    before, after = int(generalist_right[rows_of].sum()), int(combined_right[rows_of].sum())
    rows.append({"covering_specialists": count, "test_examples": int(rows_of.sum()),
                 "generalist_correct": before, "combined_correct": after,
                 "delta_correct": after - before,
                 "relative_accuracy_change": (after - before) / before if before else None})
  return rows


def tuned_offsets(logits: np.ndarray, labels: np.ndarray, maps: np.ndarray) -> np.ndarray:
  """Per specialist, the dustbin offset with the most right answers on its own task (its classes
  and the dustbin) on held-out data of natural class frequencies (see
  `bias_correction.search_offsets`; ties go to the smallest offset)."""
  dustbin = logits.shape[-1] - 1
  return np.array([bias_correction.search_offsets(logits[None, :, m], maps[m, labels],
                                                  (dustbin,))[0][0]
                   for m in range(len(maps))], np.float32)


def combined_accuracy(config: ml_collections.ConfigDict, generalist_probs: jax.Array,
                      special_logits: np.ndarray, offsets: np.ndarray, maps: np.ndarray,
                      labels: np.ndarray, top_n: int) -> dict[str, Any]:
  """Test accuracy of the generalist combined with specialists whose dustbin logits are raised
  by `offsets`, activating those that hold one of the generalist's `top_n` classes."""
  dustbin = special_logits.shape[-1] - 1
  special_logits = special_logits.copy()
  special_logits[..., dustbin] += offsets[None]
  active = specialist_lib.active_specialists(generalist_probs, jnp.asarray(maps), dustbin, top_n)
  combine = lambda *args: _combine(*args, jnp.asarray(maps), config.combine_steps,
                                   config.combine_learning_rate)
  chunk, num = 2000, len(labels)
  pad = lambda x: jnp.pad(x, [(0, -num % chunk)] + [(0, 0)] * (x.ndim - 1))
  inputs = [pad(x) for x in (generalist_probs, jax.nn.softmax(special_logits), active)]
  combined = np.concatenate([np.asarray(combine(*(x[i:i + chunk] for x in inputs)))
                             for i in range(0, num + -num % chunk, chunk)])[:num]
  right = combined.argmax(-1) == labels
  active = np.asarray(active)
  covering = np.sum(active & (maps[:, labels].T != dustbin), axis=1)
  local_right = [np.mean(np.argmax(special_logits[:, m], -1) == maps[m, labels])
                 for m in range(len(maps))]
  return {"top_n": top_n, "combined_test_accuracy": float(right.mean()),
          "combined_test_errors": int((~right).sum()),
          "mean_active_specialists": float(active.sum(1).mean()),
          "specialist_test_accuracy_on_own_task": [float(a) for a in local_right],
          "by_coverage": coverage_table(covering, np.argmax(generalist_probs, -1) == labels,
                                        right)}


def within_cluster_accuracy(generalist_logits: np.ndarray, special_logits: np.ndarray,
                            maps: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
  """Per cluster, on the test examples of its classes, the accuracy of choosing among just its
  classes: the specialist's (dustbin ignored) beside the generalist's. Whether specialists know
  their own classes better, apart from dustbins and the combination."""
  dustbin = special_logits.shape[-1] - 1
  accuracy = {"specialist": [], "generalist": []}
  for m, class_map in enumerate(maps):
    inside = class_map[labels] != dustbin
    classes = np.flatnonzero(class_map != dustbin)[np.argsort(class_map[class_map != dustbin])]
    truth = class_map[labels[inside]]
    accuracy["specialist"].append(float(np.mean(
        special_logits[inside, m, :len(classes)].argmax(-1) == truth)))
    accuracy["generalist"].append(float(np.mean(
        generalist_logits[inside][:, classes].argmax(-1) == truth)))
  return accuracy


def evaluate_variant(config: ml_collections.ConfigDict, generalist_probs: jax.Array,
                     specialists: pathlib.Path, clusters: dict[str, Any], splits: data.Splits,
                     mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """One set of specialists combined with the generalist, under each dustbin offset rule (the
  paper's log oversampling factor; tuned on the validation split) and each n of top_n_sweep."""
  maps = specialist_lib.class_maps([tuple(s) for s in clusters["subsets"]], splits.num_classes)
  offsets = {"oversampling": np.asarray(clusters["dustbin_offsets"], np.float32),
             "validation": tuned_offsets(
                 np.asarray(runs.Run.open(specialists, mesh=mesh).logits(splits.validation_images)),
                 splits.validation_labels, maps),
             "none": np.zeros(len(maps), np.float32)}
  test_logits = np.asarray(runs.Run.open(specialists, mesh=mesh).logits(splits.test_images))
  variant = {"within_cluster_accuracy": within_cluster_accuracy(
      np.log(np.asarray(generalist_probs)), test_logits, maps, splits.test_labels)}
  for rule in OFFSET_RULES:
    result = combined_accuracy(config, generalist_probs, test_logits, offsets[rule], maps,
                               splits.test_labels, config.top_n)
    result["dustbin_offsets"] = offsets[rule].tolist()
    result["errors_by_top_n"] = {
        n: (result["combined_test_errors"] if n == config.top_n else combined_accuracy(
            config, generalist_probs, test_logits, offsets[rule], maps, splits.test_labels,
            n)["combined_test_errors"]) for n in config.top_n_sweep}
    variant[rule] = result
  return variant


def render_markdown(report: dict[str, Any]) -> str:
  """RESULTS.md: clusters, accuracies and the coverage table, ours beside the paper's."""
  machine = report["machine"]
  lines = ["# Specialists for confusable classes (paper section 5)", "",
           f"Dataset: {report['dataset']} ({report['num_test_examples']} test pairs). Machine: "
           f"{reporting.describe_machine(machine)}; code {report['code_version']}. Wall time: "
           + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in
                       report["wall_time_s"].items())
           + f". Headline: {report['headline']}.", "",
           "## Clusters found (k-means on the generalist's prediction covariance)", ""]
  lines += [f"- {len(s)} classes: {', '.join(f'{c:02d}' for c in s)}" for s in report["subsets"]]
  top_ns = list(next(iter(report["variants"].values()))["oversampling"]["errors_by_top_n"])
  rules = lambda variant: {rule: variant[rule] for rule in OFFSET_RULES}
  lines += ["", "## Test accuracy", "",
            f"Top-1 accuracy at n = {report['top_n']} (specialists active when they hold one of "
            "the generalist's top n classes); errors for other n beside it.", ""]
  rows = [["generalist", "", f"{100 * report['generalist_test_accuracy']:.2f}%",
           report["generalist_test_errors"], *[""] * len(top_ns)]]
  for name, variant in report["variants"].items():
    for rule, result in rules(variant).items():
      rows.append([f"+ {report['num_specialists']} specialists ({name})", rule,
                   f"{100 * result['combined_test_accuracy']:.2f}%",
                   result["combined_test_errors"], *result["errors_by_top_n"].values()])
  rows.append([f"paper, JFT: generalist / + {PAPER['num_specialists']} specialists",
               "oversampling", f"{100 * PAPER['generalist_top1']:.1f}% / "
               f"{100 * PAPER['combined_top1']:.1f}%", "", *[""] * len(top_ns)])
  lines += stages.markdown_table(["model", "dustbin offset", "top-1 accuracy", "errors",
                                  *(f"errors, n={n}" for n in top_ns)], rows)
  lines += ["", "## Within each cluster (test pairs of its classes, choosing among its classes "
            "only)", ""]
  first = next(iter(report["variants"].values()))["within_cluster_accuracy"]
  lines += stages.markdown_table(
      ["cluster", "classes", "generalist",
       *(f"specialist ({name})" for name in report["variants"])],
      [[m, len(subset), f"{100 * first['generalist'][m]:.1f}%",
        *(f"{100 * v['within_cluster_accuracy']['specialist'][m]:.1f}%"
          for v in report["variants"].values())]
       for m, subset in enumerate(report["subsets"])])
  lines.append("")
  for name, variant in report["variants"].items():
    for rule, result in rules(variant).items():
      lines += [f"## By specialists covering the true class ({name}, {rule} offsets, n = "
                f"{report['top_n']}; the paper's Table 4 layout)", ""]
      lines += stages.markdown_table(
          ["covering", "test examples", "generalist correct", "combined correct", "delta",
           "relative change"],
          [[row["covering_specialists"], row["test_examples"], row["generalist_correct"],
            row["combined_correct"], f"{row['delta_correct']:+d}",
            "" if row["relative_accuracy_change"] is None
            else f"{100 * row['relative_accuracy_change']:+.2f}%"]
           for row in result["by_coverage"]])
      lines.append("")
  lines += [f"Paper: {PAPER['by_coverage']} With disjoint clusters at most one active "
            "specialist covers the true class here.", ""]
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, root: pathlib.Path,
        overwrite: bool = False) -> dict[str, Any]:
  """Every stage in order (finished ones are read back); returns and writes RUN/eval.json."""
  validate(config)
  start = time.perf_counter()
  mesh = parallelism.make_mesh()
  reporting.say("== 1/4 generalist ==")
  stages.train_stage(root, "generalist", config.generalist, overwrite=overwrite)
  splits = data.load_dataset(config.generalist.data)
  reporting.say("== 2/4 clusters ==")
  clusters = find_clusters(config, root, splits, mesh)
  subsets = [tuple(s) for s in clusters["subsets"]]
  reporting.say(f"{len(subsets)} specialists for the clusters: "
                + "; ".join(" ".join(f"{c:02d}" for c in s) for s in subsets))
  variants = {"hard targets": "specialists"}
  if config.soft_targets:
    variants["soft targets too"] = "specialists_soft"
  reporting.say("== 3/4 specialists ==")
  for name, folder in variants.items():
    # A config that differs (new clusters from a retrained generalist) replaces the old run.
    run_config = specialist_config(config, root, subsets, folder != "specialists")
    if rundir.config_mismatch(root / folder, run_config):
      stages.train_stage(root, folder, run_config, overwrite=True)
    else:
      stages.train_stage(root, folder, run_config)
  reporting.say("== 4/4 combined evaluation ==")
  generalist_logits = np.asarray(runs.Run.open(root / "generalist", mesh=mesh).logits(
      splits.test_images))[:, 0]
  generalist_right = np.argmax(generalist_logits, -1) == splits.test_labels
  report = {"dataset": splits.source, "num_test_examples": len(splits.test_labels),
            "generalist_test_accuracy": float(generalist_right.mean()),
            "generalist_test_errors": int((~generalist_right).sum()),
            "num_specialists": len(subsets), "subsets": clusters["subsets"],
            "top_n": config.top_n,
            "variants": {name: evaluate_variant(config, jax.nn.softmax(generalist_logits),
                                                root / folder, clusters, splits, mesh)
                         for name, folder in variants.items()},
            "paper": PAPER, "machine": reporting.machine(),
            "code_version": reporting.code_version()}
  headline = report["variants"]["hard targets"][config.dustbin_offset]
  report["headline"] = f"hard targets, {config.dustbin_offset} offsets, n = {config.top_n}"
  report["combined_test_accuracy"] = headline["combined_test_accuracy"]
  report["combined_test_errors"] = headline["combined_test_errors"]
  report["wall_time_s"] = {**reporting.stage_timings(root),
                           "this_invocation": time.perf_counter() - start}
  reporting.write_json(root / rundir.EVAL_FILE, report)
  if reporting.is_main_process():
    (root / "RESULTS.md").write_text(render_markdown(report))
  reporting.say(f"Generalist {100 * report['generalist_test_accuracy']:.2f}% test accuracy; "
                + "; ".join(f"{name}, {rule} offsets: {100 * v[rule]['combined_test_accuracy']:.2f}%"
                            for name, v in report["variants"].items() for rule in OFFSET_RULES)
                + f". Written: {root / 'eval.json'}, {root / 'RESULTS.md'}")
  return report


def main(argv):
  del argv
  run(flags.FLAGS.config, pathlib.Path(flags.FLAGS.workdir), flags.FLAGS.overwrite)


if __name__ == "__main__":
  cli.run(main, [define_flags()])
