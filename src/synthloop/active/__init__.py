"""Active synthetic data generation (Kessler et al., arXiv 2512.00884): the student chooses which
seed examples a teacher imitates.

- :mod:`synthloop.active.select`: the selection algorithms, in NumPy (top-loss, balanced easy/hard,
  hard only, k-center greedy, k-means++ seeding for BADGE).
- :mod:`synthloop.active.policy`: :class:`~synthloop.active.policy.ActivePolicy`, a prompt policy
  that scores a share of the seed pool with a :class:`~synthloop.active.policy.SeedScorer` and picks
  the seeds with one of those algorithms; each selector's config and price.

Nothing here imports an ML framework: scorers (student loss, gradient embeddings, sentence
embeddings, judges) live in plug-ins (``models/scoring.py``, ``tasks/teachers.py``).
"""
