"""Specialists for confusable classes (paper section 5) on mnist_pairs: 100 two-digit classes.

  python -m kd_jax.specialists --config configs/specialists.py --workdir runs/specialists
  python -m kd_jax.specialists --config configs/specialists.py:tiny ...   # for tests

The generalist is deliberately small (one hidden layer of 256 units, 6 epochs): it has to get a
few percent of the pairs wrong, and mostly in structured ways (a 4 read as a 9 in one position
confuses 40..49 with 90..99), for specialists to have something to fix. The paper's generalist on
JFT was likewise far from perfect (25% top-1).
"""

import ml_collections

from kd_jax import config_lib


def get_config(profile: str = "default") -> ml_collections.ConfigDict:
  generalist = config_lib.base_config()
  generalist.data.name = "mnist_pairs"
  generalist.model.input_shape = (28, 56)
  generalist.model.num_classes = 100
  generalist.model.hidden_sizes = (256,)
  generalist.num_epochs = 6
  generalist.data.validation_size = 10_000  # MNIST training digits held out for validation pairs.

  config = ml_collections.ConfigDict()
  config.generalist = generalist
  # Clusters: k-means on the columns of the covariance of the generalist's validation predictions.
  config.num_clusters = 12
  config.min_classes = 2  # Smaller clusters get no specialist.
  config.cluster_seed = 0
  # Specialists: a population, one member per cluster, initialised from the generalist.
  config.specialist_epochs = 3
  config.specialist_learning_rate = 3e-4
  config.soft_targets = False  # Paper section 6: also fit the generalist's soft targets.
  config.temperature = 2.0  # With soft_targets.
  config.alpha = 0.5  # With soft_targets: the weight of the soft term.
  # Inference: specialists whose subset holds one of the generalist's top_n classes are active.
  config.top_n = 1  # The paper's n.
  config.top_n_sweep = (1, 2, 3)  # Also reported.
  # The dustbin offset of the headline: "oversampling" (the paper's rule) or "validation" (tuned
  # per specialist on the validation split); both are reported.
  config.dustbin_offset = "oversampling"
  config.combine_steps = 200
  config.combine_learning_rate = 0.5

  if profile == "tiny":  # Seconds on a CPU, for tests: a tiny MNIST folder, few pairs.
    generalist.model.hidden_sizes = (32,)
    generalist.num_epochs = 2
    generalist.batch_size = 32
    generalist.eval_batch_size = 100
    generalist.data.check_counts = False
    generalist.data.validation_size = 100
    generalist.data.pairs.num_train = 800
    generalist.data.pairs.num_validation = 400
    generalist.data.pairs.num_test = 400
    config.num_clusters = 6
    config.specialist_epochs = 1
    config.combine_steps = 50
    config.top_n_sweep = (1, 2)
  elif profile != "default":
    raise ValueError(f"Unknown profile {profile!r}: default or tiny.")
  return config
