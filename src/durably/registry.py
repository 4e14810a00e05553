"""Which workflow definitions an engine can run: an object, not a module global."""

from __future__ import annotations

import threading

from .exceptions import WorkflowDefinitionError, WorkflowNotRegistered
from .workflow import Workflow, registered


class Registry:
    """Workflows by (name, version). A version not registered here is still found when the
    process's latest definition of that name has it (the module was imported)."""

    def __init__(self) -> None:
        self._workflows: dict[tuple[str, str], Workflow] = {}
        self._lock = threading.Lock()

    def add(self, wf: Workflow) -> Workflow:
        if not isinstance(wf, Workflow):
            raise WorkflowDefinitionError(f"expected a Workflow, got {type(wf).__name__}")
        wf.validate()
        with self._lock:
            self._workflows[(wf.name, wf.version)] = wf
            for child in wf.children():  # what its sub-workflow tasks run
                self._workflows[(child.name, child.version)] = child
        return wf

    def get(self, name: str, version: str) -> Workflow:
        wf = self._workflows.get((name, version))
        if wf is None:
            candidate = registered(name)
            if candidate is not None and candidate.version == version:
                wf = self.add(candidate)
        if wf is None:
            raise WorkflowNotRegistered(
                f"workflow {name!r} version {version} is not registered in this process: "
                "import the module that defines it (or pass it to Engine(workflows=...)); "
                "a changed definition has a new version and cannot resume old executions"
            )
        return wf

    def find(self, name: str, version: str) -> Workflow | None:
        try:
            return self.get(name, version)
        except WorkflowNotRegistered:
            return None

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
