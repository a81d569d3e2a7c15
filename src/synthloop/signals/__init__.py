"""Outside signal for self-training (Escaping Collapse, Amin et al. 2025): labelers and filters.

- :mod:`~synthloop.signals.labelers`: a *beta-weak labeler* answers a prompt correctly at least a
  beta fraction of the time. ``ControlledLabeler`` corrupts the task's gold solution at rate
  1 - beta into a plausible wrong one (so beta is exact); ``ModelLabeler`` makes any generator with
  its own model a labeler, whose beta is measured against gold (``measure.measure_beta``).
- :mod:`~synthloop.signals.filters`: a *gamma-noisy filter* keeps or rejects the model's outputs.
  ``NoisyFilter`` wraps a gold verifier and errs at set false-accept / false-reject rates;
  ``MajorityVote`` judges without gold (agreement with the plurality answer of the prompt's k
  samples); ``Audited`` records, row by row, what gold says beside the filter's verdict.
- :mod:`~synthloop.signals.source`: ``LabeledPrompts`` spends L labels a round on prompts chosen by
  an allocation (uniform, or hardest first: ``policies.HardestFirst``), as the outside rows of the
  ``mix`` training set; what each label costs (the labeler's usage) is charged to the ``label`` stage.

Nothing here imports an ML framework: labelers and filters are Generators and Verifiers over the
columns the tasks already carry (``solution``, ``answer``, ``completion``).
"""
