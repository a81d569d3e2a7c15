"""synthloop: iterative synthetic-data bootstrapping under a compute budget.

generate -> verify -> select -> update -> (account, evaluate, commit) -> repeat
"""

from synthloop.budget import CostModel, Ledger, Planner, UnitCosts, plan
from synthloop.loop import Components, LoopSettings, run
from synthloop.records import Candidates, Prompts, Scores, Verdict

__all__ = [
    "Candidates",
    "Components",
    "CostModel",
    "Ledger",
    "LoopSettings",
    "Planner",
    "Prompts",
    "Scores",
    "UnitCosts",
    "Verdict",
    "plan",
    "run",
]
__version__ = "0.1.0"
