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
The pure parts (clustering, class maps, the KL combination) are in `kd_jax.specialist_lib`.
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
from ml_collections import config_flags

from kd_jax import (checkpointing, cli, config_lib, data, evaluation, parallelism, reporting,
                    specialist_lib, trainer)
from kd_jax.errors import ConfigError

# The paper's own figures (JFT, section 5), typed in; everything else is measured.
PAPER = {"dataset": "JFT (15,000 classes, 100M images)", "num_specialists": 61,
         "generalist_top1": 0.250, "combined_top1": 0.261,
         "by_coverage": "Relative accuracy gains grow with the number of specialists covering the "
                        "correct class (Table 4)."}


def define_flags() -> flags.FlagHolder:
  """The command's flags (only when run as a command: importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "Root folder of the stages.", required=True)
  return config_flags.DEFINE_config_file("config", "configs/specialists.py",
                                         "Specialists config file.", lock_config=True)


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


def specialist_config(config: ml_collections.ConfigDict, root: pathlib.Path,
                      subsets: list[tuple[int, ...]], soft_targets: bool) -> ml_collections.ConfigDict:
  """The specialists' run: the generalist's config with the subsets, its own epochs and rate,
  and (with soft targets) the generalist as teacher."""
  run = config.generalist.copy_and_resolve_references()
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
  logits = evaluation.logits_on(generalist, splits.validation_images, mesh)[:, 0]
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


def combined_evaluation(config: ml_collections.ConfigDict, generalist_logits: np.ndarray,
                        specialists: pathlib.Path, clusters: dict[str, Any], splits: data.Splits,
                        mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """Test accuracy of the generalist combined with the specialists in `specialists`."""
  subsets = [tuple(s) for s in clusters["subsets"]]
  maps = jnp.asarray(specialist_lib.class_maps(subsets, splits.num_classes))
  dustbin = max(len(s) for s in subsets)
  special_logits = evaluation.logits_on(specialists, splits.test_images, mesh)
  special_logits[..., dustbin] += np.asarray(clusters["dustbin_offsets"])[None]
  generalist_probs = jax.nn.softmax(generalist_logits)
  active = specialist_lib.active_specialists(generalist_probs, maps, dustbin, config.top_n)
  combine = jax.jit(lambda *args: specialist_lib.combine(
      *args, maps, config.combine_steps, config.combine_learning_rate))
  chunk = 2000
  num = len(splits.test_labels)
  pad = lambda x: jnp.pad(x, [(0, -num % chunk)] + [(0, 0)] * (x.ndim - 1))
  inputs = [pad(x) for x in (generalist_probs, jax.nn.softmax(special_logits), active)]
  combined = np.concatenate([np.asarray(combine(*(x[i:i + chunk] for x in inputs)))
                             for i in range(0, num + -num % chunk, chunk)])[:num]
  labels = splits.test_labels
  generalist_right = np.argmax(generalist_logits, -1) == labels
  combined_right = combined.argmax(-1) == labels
  covering = np.sum(np.asarray(active) & (np.asarray(maps)[:, labels].T != dustbin), axis=1)
  local_right = [np.mean(np.argmax(special_logits[:, m], -1)[np.asarray(maps)[m, labels] !=
                                                                dustbin] ==
                         np.asarray(maps)[m, labels][np.asarray(maps)[m, labels] != dustbin])
                 for m in range(len(subsets))]
  return {"combined_test_accuracy": float(combined_right.mean()),
          "combined_test_errors": int((~combined_right).sum()),
          "examples_with_active_specialist": int(np.asarray(active).any(1).sum()),
          "mean_active_specialists": float(np.asarray(active).sum(1).mean()),
          "specialist_accuracy_on_own_classes": [float(a) for a in local_right],
          "by_coverage": coverage_table(covering, generalist_right, combined_right)}


def render_markdown(report: dict[str, Any]) -> str:
  """RESULTS.md: clusters, accuracies and the coverage table, ours beside the paper's."""
  lines = ["# Specialists for confusable classes (paper section 5)", "",
           f"Dataset: {report['dataset']}. Machine: {report['machine']['device']} "
           f"({report['machine']['host_cpu']}, {report['machine']['host_cores']} cores, jax "
           f"{report['machine']['jax']}); code {report['code_version']}; wall time "
           f"{report['wall_time_s'] / 60:.1f} min.", "",
           "## Clusters found (k-means on the generalist's prediction covariance)", ""]
  lines += [f"- {len(s)} classes: {', '.join(f'{c:02d}' for c in s)}" for s in report["subsets"]]
  lines += ["", "## Test accuracy", "", "| model | top-1 accuracy | errors |", "|---|---|---|",
            f"| generalist | {100 * report['generalist_test_accuracy']:.2f}% | "
            f"{report['generalist_test_errors']} |"]
  for name, variant in report["variants"].items():
    lines.append(f"| generalist + {len(report['subsets'])} specialists ({name}) | "
                 f"{100 * variant['combined_test_accuracy']:.2f}% | "
                 f"{variant['combined_test_errors']} |")
  lines += [f"| paper, JFT: generalist / + {PAPER['num_specialists']} specialists | "
            f"{100 * PAPER['generalist_top1']:.1f}% / {100 * PAPER['combined_top1']:.1f}% | |", ""]
  for name, variant in report["variants"].items():
    lines += [f"## By specialists covering the true class ({name}; the paper's Table 4 layout)",
              "", "| covering | test examples | generalist correct | combined correct | delta | "
              "relative change |", "|---|---|---|---|---|---|"]
    for row in variant["by_coverage"]:
      change = row["relative_accuracy_change"]
      lines.append(f"| {row['covering_specialists']} | {row['test_examples']} | "
                   f"{row['generalist_correct']} | {row['combined_correct']} | "
                   f"{row['delta_correct']:+d} | "
                   f"{'' if change is None else f'{100 * change:+.2f}%'} |")
    lines.append("")
  lines += [f"Paper: {PAPER['by_coverage']}", ""]
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, root: pathlib.Path,
        overwrite: bool = False) -> dict[str, Any]:
  """Every stage in order (finished ones are read back); returns and writes RUN/eval.json."""
  validate(config)
  start = time.perf_counter()
  mesh = parallelism.make_mesh()
  reporting.say("== 1/4 generalist ==")
  trainer.train_and_evaluate(config.generalist, root / "generalist", overwrite)
  splits = data.load_dataset(config.generalist.data)
  reporting.say("== 2/4 clusters ==")
  clusters = find_clusters(config, root, splits, mesh)
  subsets = [tuple(s) for s in clusters["subsets"]]
  reporting.say(f"{len(subsets)} specialists for the clusters: "
                + "; ".join(" ".join(f"{c:02d}" for c in s) for s in subsets))
  variants = {"hard targets": False, **({"soft targets too": True} if config.soft_targets else {})}
  reporting.say("== 3/4 specialists ==")
  for name, soft in variants.items():
    # A config that differs (new clusters from a retrained generalist) replaces the old run.
    trainer.train_and_evaluate(specialist_config(config, root, subsets, soft),
                               root / ("specialists_soft" if soft else "specialists"),
                               overwrite=True)
  reporting.say("== 4/4 combined evaluation ==")
  generalist_logits = evaluation.logits_on(root / "generalist", splits.test_images, mesh)[:, 0]
  generalist_right = np.argmax(generalist_logits, -1) == splits.test_labels
  report = {"dataset": splits.source, "num_test_examples": len(splits.test_labels),
            "generalist_test_accuracy": float(generalist_right.mean()),
            "generalist_test_errors": int((~generalist_right).sum()),
            "num_specialists": len(subsets), "subsets": clusters["subsets"],
            "dustbin_offsets": clusters["dustbin_offsets"], "top_n": config.top_n,
            "variants": {name: combined_evaluation(
                config, generalist_logits, root / ("specialists_soft" if soft else "specialists"),
                clusters, splits, mesh) for name, soft in variants.items()},
            "paper": PAPER, "machine": reporting.machine(),
            "code_version": reporting.code_version()}
  report["combined_test_accuracy"] = report["variants"]["hard targets"]["combined_test_accuracy"]
  report["wall_time_s"] = time.perf_counter() - start
  reporting.write_json(root / "eval.json", report)
  if reporting.is_main_process():
    (root / "RESULTS.md").write_text(render_markdown(report))
  reporting.say(f"Generalist {100 * report['generalist_test_accuracy']:.2f}%, combined "
                + ", ".join(f"({name}) {100 * v['combined_test_accuracy']:.2f}%"
                            for name, v in report["variants"].items())
                + f" test accuracy. Written: {root / 'eval.json'}, {root / 'RESULTS.md'}")
  return report


def main(argv):
  del argv
  run(flags.FLAGS.config, pathlib.Path(flags.FLAGS.workdir), flags.FLAGS.overwrite)


if __name__ == "__main__":
  cli.run(main, [define_flags()])
