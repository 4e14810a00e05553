"""Importing the user's modules by name, as ``durably run`` and ``durably worker`` do, and
finding the Workflows, sagas and brokers defined at their top level."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from .workflow import Workflow

if TYPE_CHECKING:
    from .broker_base import Broker


class LoadError(click.ClickException):
    """A module or workflow that cannot be loaded, explained in one line (exit status 1)."""


def add_cwd_to_path() -> None:
    """Like uvicorn: modules in the current directory are importable by name."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def import_module(name: str) -> ModuleType:
    if name.endswith(".py") or "/" in name or "\\" in name:
        stem = name.removesuffix(".py").replace("/", ".").replace("\\", ".").strip(".")
        raise LoadError(
            f"{name!r} is a file path: give a module name instead (e.g. {stem!r}), "
            "run from the directory that contains it"
        )
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise LoadError(f"{name!r} is not a module name (e.g. 'flows' or 'pkg.flows')")
    add_cwd_to_path()
    try:
        return importlib.import_module(name)
    except Exception as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        # Only the module itself (or a parent package) is "not found"; a missing import
        # inside it is an error in the user's code.
        if missing and (name == missing or name.startswith(missing + ".")):
            raise LoadError(
                f"cannot import module {name!r}: no module named {missing!r} "
                "(searched the current directory and sys.path)"
            ) from exc
        raise LoadError(
            f"error while importing module {name!r}: {type(exc).__name__}: {exc}"
        ) from exc


def import_modules(names: Iterable[str]) -> list[ModuleType]:
    return [import_module(name) for name in names]


def workflow_attributes(module: ModuleType) -> dict[str, Workflow]:
    """The module's public attributes that are Workflows (one workflow may have two names)."""
    return {
        attr: value
        for attr, value in vars(module).items()
        if isinstance(value, Workflow) and not attr.startswith("_")
    }


def top_level_workflows(module: ModuleType) -> list[Workflow]:
    found: dict[int, Workflow] = {}
    for value in workflow_attributes(module).values():
        found.setdefault(id(value), value)
    return list(found.values())


def top_level_sagas(module: ModuleType) -> list[Any]:
    """The sagas defined at the module's top level (committed ones registered themselves on
    import already; the worker's reply listener registers these too)."""
    try:
        from .saga import Saga
    except ModuleNotFoundError as exc:
        if exc.name == "durably.saga":
            return []
        raise
    found: dict[int, Saga] = {}
    for value in vars(module).values():
        # An uncommitted saga cannot run, nor be registered for resuming.
        if isinstance(value, Saga) and value.committed:
            found.setdefault(id(value), value)
    return list(found.values())


def top_level_brokers(module: ModuleType) -> list[Broker]:
    """The brokers defined at the module's top level (their ``@broker.service`` participants
    are what ``durably worker`` serves), each once however many names it has."""
    from .broker import Broker  # asyncio and the saga messages: only for the commands that serve

    found: dict[int, Broker] = {}
    for value in vars(module).values():
        if isinstance(value, Broker):
            found.setdefault(id(value), value)
    return list(found.values())


def load_workflow(spec: str) -> Workflow:
    """``module:attribute`` (or ``module`` alone when it defines exactly one workflow)."""
    module_name, sep, attr = spec.partition(":")
    module = import_module(module_name)
    workflows = top_level_workflows(module)
    names = ", ".join(workflow_attributes(module))
    if not sep:
        if len(workflows) == 1:
            return workflows[0]
        if not workflows:
            raise LoadError(f"module {module_name!r} defines no durably.Workflow at the top level")
        raise LoadError(
            f"module {module_name!r} defines several workflows ({names}): "
            f"name one as {module_name}:ATTRIBUTE"
        )
    if not attr:
        raise LoadError(f"{spec!r}: name the workflow after the colon, as MODULE:ATTRIBUTE")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            hint = f" (workflows in it: {names})" if names else ""
            raise LoadError(f"module {module_name!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not isinstance(obj, Workflow):
        raise LoadError(f"{spec!r} is a {type(obj).__name__}, not a durably.Workflow")
    return obj
