"""The reconcile engine: the log in, verdicts and tallies out.

`engine` (the `Reconciler`: ticks, checkpoints, recovery, back-fill) drives
the C state machine over the store; `config` holds its settings, `outputs`
what a tick writes, `history` how long its per-minute and per-hour rows are
kept, `retention` the pruning of the log and the verdicts past theirs and
the space given back, `lease` the one-engine-per-store lock, `quarantine`
the log rows the machine rejects, set aside.
"""

__all__ = [
    "config", "engine", "history", "lease", "outputs", "partitioned", "quarantine", "retention",
]
