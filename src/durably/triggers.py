"""Trigger rules: whether a task runs once its dependencies are done (SPEC §3.2).

A rule sees the dependencies' statuses and the task's input context. Status rules are
``all_success`` (the default), ``all_done``, ``one_failed`` and ``none_failed``; context rules
are ``when(key, op, value)`` combined with ``all_of``, ``any_of`` and ``none_of``. A tree made
only of context rules also requires every dependency to have completed, so
``trigger=when("total", ">", 100)`` never runs after a failed dependency; name a status rule
inside ``all_of`` to choose otherwise.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import WorkflowDefinitionError, WorkflowError

_FAILED = frozenset({"failed", "abandoned"})


class TriggerRule:
    """Base of every rule; instances are immutable and serializable to JSON."""

    uses_status = False
    uses_context = False

    def evaluate(self, statuses: Sequence[str], context: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def to_json(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<trigger {self.to_json()}>"


@dataclass(frozen=True, repr=False)
class StatusRule(TriggerRule):
    name: str
    uses_status = True

    def evaluate(self, statuses: Sequence[str], context: Mapping[str, Any]) -> bool:
        if self.name == "all_success":
            return all(s == "completed" for s in statuses)
        if self.name == "all_done":
            return True
        if self.name == "one_failed":
            return any(s in _FAILED for s in statuses)
        return not any(s in _FAILED for s in statuses)  # none_failed

    def to_json(self) -> Any:
        return self.name


all_success = StatusRule("all_success")
all_done = StatusRule("all_done")
one_failed = StatusRule("one_failed")
none_failed = StatusRule("none_failed")
STATUS_RULES = {r.name: r for r in (all_success, all_done, one_failed, none_failed)}


def _contains(container: Any, value: Any) -> bool:
    return value in container


def _in(value: Any, container: Any) -> bool:
    return value in container


OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
    "in": _in,
    "contains": _contains,
}
UNARY_OPS = ("exists", "not_exists")


@dataclass(frozen=True, repr=False)
class When(TriggerRule):
    key: str
    op: str
    value: Any = None
    uses_context = True

    def evaluate(self, statuses: Sequence[str], context: Mapping[str, Any]) -> bool:
        if self.op == "exists":
            return self.key in context
        if self.op == "not_exists":
            return self.key not in context
        if self.key not in context:
            return False
        try:
            return bool(OPS[self.op](context[self.key], self.value))
        except TypeError as exc:
            raise WorkflowError(
                f"trigger when({self.key!r}, {self.op!r}, {self.value!r}) cannot compare "
                f"{type(context[self.key]).__name__} with {type(self.value).__name__}"
            ) from exc

    def to_json(self) -> Any:
        return {"when": [self.key, self.op, repr(self.value)]}


def when(key: str, op: str, value: Any = None) -> TriggerRule:
    """A rule on the task's input context: ``when("total", ">", 100)``."""
    if not isinstance(key, str):
        raise WorkflowDefinitionError(f"when() key must be a str, not {type(key).__name__}")
    if op not in OPS and op not in UNARY_OPS:
        raise WorkflowDefinitionError(
            f"when() operator {op!r} is unknown; use one of {', '.join([*OPS, *UNARY_OPS])}"
        )
    return When(key, op, value)


@dataclass(frozen=True, repr=False)
class Combined(TriggerRule):
    kind: str
    rules: tuple[TriggerRule, ...]

    @property
    def uses_status(self) -> bool:  # type: ignore[override]
        return any(rule.uses_status for rule in self.rules)

    @property
    def uses_context(self) -> bool:  # type: ignore[override]
        return any(rule.uses_context for rule in self.rules)

    def evaluate(self, statuses: Sequence[str], context: Mapping[str, Any]) -> bool:
        results = (rule.evaluate(statuses, context) for rule in self.rules)
        if self.kind == "all_of":
            return all(results)
        if self.kind == "any_of":
            return any(results)
        return not any(results)

    def to_json(self) -> Any:
        return {self.kind: [rule.to_json() for rule in self.rules]}


def _combine(kind: str, rules: tuple[TriggerRule | str, ...]) -> TriggerRule:
    if not rules:
        raise WorkflowDefinitionError(f"{kind}() needs at least one rule")
    return Combined(kind, tuple(as_rule(rule) for rule in rules))


def all_of(*rules: TriggerRule | str) -> TriggerRule:
    return _combine("all_of", rules)


def any_of(*rules: TriggerRule | str) -> TriggerRule:
    return _combine("any_of", rules)


def none_of(*rules: TriggerRule | str) -> TriggerRule:
    return _combine("none_of", rules)


def as_rule(trigger: TriggerRule | str | None) -> TriggerRule:
    """Accept a rule, a status rule's name, or None for the default."""
    if trigger is None:
        return all_success
    if isinstance(trigger, TriggerRule):
        return trigger
    if isinstance(trigger, str) and trigger in STATUS_RULES:
        return STATUS_RULES[trigger]
    raise WorkflowDefinitionError(
        f"trigger must be one of {', '.join(STATUS_RULES)} or a when()/all_of()/any_of()/"
        f"none_of() rule, not {trigger!r}"
    )


def should_run(rule: TriggerRule, statuses: Sequence[str], context: Mapping[str, Any]) -> bool:
    """Whether a task whose dependencies all finished runs (True) or is skipped (False)."""
    if not rule.uses_status and not all_success.evaluate(statuses, context):
        return False
    return rule.evaluate(statuses, context)
