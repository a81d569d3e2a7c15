import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import settings

# The machines running the suite are shared and noisy: timing deadlines would make tests flaky.
# derandomize: the same examples on every run, so a CI result can be reproduced and rerun.
settings.register_profile("synthloop", deadline=None, max_examples=60, derandomize=True)
settings.load_profile("synthloop")

# A suite started as a background job of a non-interactive shell (`make test &`, nohup) inherits
# SIGINT ignored, and an ignored signal stays ignored across exec: every CLI process the tests
# interrupt would then ignore the Ctrl-C they send and hang. A handler, unlike SIG_IGN, is reset to
# the default in each child, so installing Python's own gives them a Ctrl-C that works.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
