import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import settings

# The machines running the suite are shared and noisy: timing deadlines would make tests flaky.
# derandomize: the same examples on every run, so a CI result can be reproduced and rerun.
settings.register_profile("synthloop", deadline=None, max_examples=60, derandomize=True)
settings.load_profile("synthloop")
