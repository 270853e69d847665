"""The paper's experiments, built on the kd_jax library and never imported by it.

  reproduce        every MNIST claim of the paper, ours beside the paper's (stages, tables, plots)
  fidelity         the distillation-gap ablation: what keeps a student from its teacher
  specialists      a generalist plus specialists for confusable classes (section 5)
  frontier         test errors against inference cost of a reproduction's models
  bias_correction  the output-bias offset for classes a transfer set omitted (section 3)
  stages           the one stage runner (with timings.json) and the summary helpers they share

Commands: `python -m kd_jax.paper.<name>` (and the aliases `python -m kd_jax.<name>`). Their
configs are the shipped `reproduce`, `fidelity` and `specialists` configs (configs/).
"""
