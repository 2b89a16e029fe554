"""BudgetThinker: make a reasoning model think within a token budget it is told about.

The core package is pure Python: the control-token spec (`control_spec`), the per-request forcing
state machine (`forcing`) and the prompt tips (`prompts`). Engine adapters live in
`budgetthinker.patches`, preparation in `budgetthinker.preparation`.
"""

__version__ = "0.1.0"
