"""Which definitions can resume an execution (SPEC §3.5): its *shape* and its version.

An execution records the version of the definition that started it (``wf.version``: a hash of
task names, dependencies and code, or a declared ``Workflow(name, version="2")``) and the
*shape version*: a hash of what the stored task rows depend on, task names and dependencies
(in order: they decide how inputs merge), how a mapped task fans out, and which workflow a
sub-workflow task runs. Any definition of
the same name and shape version may resume it, so a code-only deploy runs the new code for
the tasks not yet completed; a changed shape waits for a definition of its own.

A declared version is part of the shape version: bumping it is how a user says "old
executions must not run on this code", even when the shape did not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Protocol

from .exceptions import WorkflowDefinitionError


class _DeclaredTask(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def dependencies(self) -> tuple[str, ...]: ...
    @property
    def map_over(self) -> str | None: ...
    @property
    def collect(self) -> str | None: ...
    @property
    def child(self) -> Any: ...


def shape_version(name: str, tasks: Iterable[_DeclaredTask], declared: str | None) -> str:
    """A hex digest of the workflow's shape; declaration order and code are not in it."""
    h = hashlib.sha256(f"shape\0{name}\0{declared or ''}".encode())
    for task in sorted(tasks, key=lambda t: t.name):
        h.update(f"\0{task.name}\0{','.join(task.dependencies)}".encode())
        if task.map_over is not None:
            h.update(f"\0map:{task.map_over}:{task.collect}".encode())
        if task.child is not None:  # a sub-workflow task waits for a child of this workflow
            child = task.child if isinstance(task.child, str) else task.child.name
            h.update(f"\0child:{child}".encode())
    return h.hexdigest()[:16]


def key(name: str, version: str) -> str:
    """How the claim query names a definition an execution may run on (``name@version``)."""
    return f"{name}@{version}"


def check_declared(version: Any) -> str | None:
    """``Workflow(name, version=...)``: None, or a short printable str."""
    if version is None:
        return None
    if (
        not isinstance(version, str)
        or not version.strip()
        or len(version) > 64
        or not version.isprintable()
    ):
        raise WorkflowDefinitionError(
            f"version must be a non-empty printable str of at most 64 characters, not {version!r}"
        )
    return version
