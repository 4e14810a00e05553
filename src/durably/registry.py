"""Which workflow definitions an engine can run: an object, not a module global.

An execution resumes on any registered definition of its workflow with the same shape
version (:mod:`durably.versions`), the one registered last winning: a code-only deploy runs
the new code. Rows written before shape versions were stored carry their version there, so
they still find the exact definition they started on.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from .exceptions import WorkflowDefinitionError, WorkflowNotRegistered
from .versions import key
from .workflow import Workflow, registered


class Registry:
    """Workflows by (name, version), and by (name, shape version) for resuming. A
    definition not registered here is still found when the process's latest definition of
    that name fits (the module was imported)."""

    def __init__(self) -> None:
        self._workflows: dict[tuple[str, str], Workflow] = {}
        self._by_shape: dict[tuple[str, str], Workflow] = {}
        self._claimable: dict[str, Workflow] | None = None
        self._lock = threading.Lock()

    def add(self, wf: Workflow) -> Workflow:
        if not isinstance(wf, Workflow):
            raise WorkflowDefinitionError(f"expected a Workflow, got {type(wf).__name__}")
        wf.validate()
        with self._lock:
            if self._workflows.get((wf.name, wf.version)) is not wf:
                self._workflows[(wf.name, wf.version)] = wf
                # Registered last wins among the same shape (re-adding one does not reorder).
                self._by_shape.pop((wf.name, wf.shape_version), None)
                self._by_shape[(wf.name, wf.shape_version)] = wf
                self._claimable = None
        for child in wf.children():  # what its sub-workflow tasks run
            self.add(child)
        return wf

    def get(self, name: str, version: str, shape: str | None = None) -> Workflow:
        """The definition to run an execution started on ``version`` of shape ``shape``."""
        wf = self.find(name, version, shape)
        if wf is None:
            raise WorkflowNotRegistered(
                f"workflow {name!r} version {version} is not registered in this process, nor "
                "any definition of the same shape (task names and dependencies): import the "
                "module that defines it (or pass it to Engine(workflows=...)); a definition "
                "whose shape changed cannot resume old executions (see the README, "
                "'Deploying a change')"
            )
        return wf

    def find(self, name: str, version: str, shape: str | None = None) -> Workflow | None:
        wf = self._match(name, version, shape)
        if wf is None:
            candidate = registered(name)
            if candidate is not None and _fits(candidate, version, shape):
                wf = self.add(candidate)
        return wf

    def _match(self, name: str, version: str, shape: str | None) -> Workflow | None:
        if shape is not None:
            wf = self._by_shape.get((name, shape))
            if wf is not None or shape != version:
                return wf
        # Without a shape version, or a row from before 0008 (its shape column holds its
        # version): only the very definition it started on.
        return self._workflows.get((name, version))

    def by_name(self, name: str) -> Workflow:
        """The definition to start by name: the one registered last under that name."""
        with self._lock:
            found = [wf for (n, _), wf in self._workflows.items() if n == name]
        if found:
            return found[-1]
        latest = registered(name)
        if latest is None:
            raise WorkflowNotRegistered(
                f"no workflow named {name!r} is registered: pass the Workflow itself, or "
                "register it first (Engine(workflows=[...]) or engine.register(wf))"
            )
        return self.add(latest)

    def versions(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._workflows)

    def claimable(self) -> Mapping[str, Workflow]:
        """``name@shape version`` (and ``name@version``, for rows from before shape versions)
        -> the definition a worker runs such an execution on. Built once per change."""
        found = self._claimable
        if found is None:
            with self._lock:
                found = {key(n, v): wf for (n, v), wf in self._workflows.items()}
                found.update({key(n, s): wf for (n, s), wf in self._by_shape.items()})
                self._claimable = found
        return found


def _fits(wf: Workflow, version: str, shape: str | None) -> bool:
    if shape is not None and wf.shape_version == shape:
        return True
    return (shape is None or shape == version) and wf.version == version
