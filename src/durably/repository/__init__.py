"""The workflow repository: the one place that knows the query names (``sql/queries.sql``).

Everything above it (runtime, runner, worker, engine, CLI views) speaks in domain terms —
create an execution, start a task, record an attempt — and gets typed records back
(:mod:`durably.records`). Every method runs inside the caller's transaction, so the caller
decides what commits together. Times come in as epoch seconds from the engine's clock.

Split by aggregate: :mod:`.contexts` (contexts and outputs), :mod:`.tasks` (task states,
attempts, claims), :mod:`.executions` (executions and whole-execution reads),
:mod:`.configurations` (what task rows of a definition share, stored once), :mod:`.maintenance`
(pruning finished executions, schedules' shared state), :mod:`.gauges`
(what a metrics scrape counts), :mod:`.listing` (pages of executions and their counts per
status), :mod:`.flow` (claims under flow control, the definitions workers serve).
"""

from __future__ import annotations

from .executions import Executions
from .flow import Flow
from .gauges import Gauges
from .maintenance import Maintenance
from .rows import new_id


class Repository(Executions, Maintenance, Gauges, Flow):
    """Named queries in, typed records out. Holds caches of what never changes: each workflow
    version's task-row template and task configurations, built once (the same for every
    execution), and which configurations are stored (:mod:`.configurations`)."""


__all__ = ["Repository", "new_id"]
