"""Trigger rules: whether a task runs once its dependencies are done (SPEC §3.2).

A rule sees its dependencies' ``(name, status)`` pairs and the task's input context. Status
rules are Airflow's: ``all_success`` (the default), ``all_done``, ``one_failed``,
``one_success``, ``none_failed`` and ``none_failed_min_one_success``. Context rules are
``when(key, op, value)``, combined with ``all_of``, ``any_of`` and ``none_of``. A tree made
only of context rules also requires every dependency to have completed, so
``trigger=when("total", ">", 100)`` never runs after a failed dependency; name a status rule
inside ``all_of`` to choose otherwise.

A rule that does not hold says why (:class:`Check`): the part of the rule that failed, with
values as their JSON, and whether a failed dependency is what made it false, in which case the
task is ``upstream_failed`` rather than ``skipped``.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import WorkflowDefinitionError, WorkflowError
from .statuses import COMPLETED, FAILED_LIKE, SKIPPED, UPSTREAM_FAILED

Deps = Sequence[tuple[str, str]]


@dataclass(slots=True)
class Check:
    """A rule's evaluation: ``held``, else ``reason`` and whether a failure caused it."""

    held: bool
    reason: str = ""
    by_failure: bool = False

    @property
    def status(self) -> str:
        """The status a task gets when its rule does not hold."""
        return UPSTREAM_FAILED if self.by_failure else SKIPPED


HOLDS = Check(True)


def as_json(value: Any) -> str:
    """A value as the JSON a person reads in a reason (codec's tags for other types)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        from . import codec

        try:
            return codec.dumps_value(value)
        except Exception:
            return repr(value)


def _listing(deps: Deps, wanted: frozenset[str] | None = None) -> str:
    chosen = [(n, s) for n, s in deps if wanted is None or s in wanted]
    return ", ".join(f"{n!r} is {s}" for n, s in chosen)


class TriggerRule:
    """Base of every rule; instances are immutable and serializable to JSON."""

    uses_status = False
    uses_context = False

    def check(self, deps: Deps, context: Mapping[str, Any]) -> Check:
        raise NotImplementedError

    def evaluate(self, statuses: Sequence[str], context: Mapping[str, Any]) -> bool:
        """Whether the rule holds for these dependency statuses and context."""
        return self.check(_anonymous(statuses), context).held

    def to_json(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<trigger {json.dumps(self.to_json())}>"


def _anonymous(statuses: Sequence[str]) -> Deps:
    return [(f"dependency {i + 1}", status) for i, status in enumerate(statuses)]


@dataclass(frozen=True, repr=False)
class StatusRule(TriggerRule):
    name: str
    uses_status = True

    def check(self, deps: Deps, context: Mapping[str, Any]) -> Check:
        if self.name == "all_success":  # the default, decided once per task: keep it short
            for _, status in deps:
                if status != COMPLETED:
                    break
            else:
                return HOLDS
        failed = any(status in FAILED_LIKE for _, status in deps)
        done = any(status == COMPLETED for _, status in deps)
        name = self.name
        if name == "all_done":
            return HOLDS
        if name == "one_failed":
            return HOLDS if failed else Check(False, "one_failed: no dependency failed")
        if name in ("all_success", "none_failed", "none_failed_min_one_success") and failed:
            return Check(False, f"{name}: {_listing(deps, FAILED_LIKE)}", by_failure=True)
        if name == "all_success":
            if all(status == COMPLETED for _, status in deps):
                return HOLDS
            return Check(False, f"all_success: {_listing(deps, frozenset({SKIPPED}))}")
        if name == "none_failed":
            return HOLDS
        if done:  # one_success, none_failed_min_one_success
            return HOLDS
        return Check(
            False, f"{name}: no dependency completed ({_listing(deps)})", by_failure=failed
        )

    def to_json(self) -> Any:
        return self.name


all_success = StatusRule("all_success")
all_done = StatusRule("all_done")
one_failed = StatusRule("one_failed")
one_success = StatusRule("one_success")
none_failed = StatusRule("none_failed")
none_failed_min_one_success = StatusRule("none_failed_min_one_success")
STATUS_RULES = {
    r.name: r
    for r in (
        all_success,
        all_done,
        one_failed,
        one_success,
        none_failed,
        none_failed_min_one_success,
    )
}


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

    def describe(self) -> str:
        if self.op in UNARY_OPS:
            return f"when {json.dumps(self.key)} {self.op}"
        return f"when {json.dumps(self.key)} {self.op} {as_json(self.value)}"

    def check(self, deps: Deps, context: Mapping[str, Any]) -> Check:
        present = self.key in context
        if self.op == "exists":
            return HOLDS if present else Check(False, f"{self.describe()}: the key is absent")
        if self.op == "not_exists":
            if not present:
                return HOLDS
            return Check(False, f"{self.describe()}: it is {as_json(context[self.key])}")
        if not present:
            return Check(False, f"{self.describe()}: the key is absent")
        actual = context[self.key]
        try:
            held = bool(OPS[self.op](actual, self.value))
        except TypeError as exc:
            raise WorkflowError(
                f"trigger {self.describe()} cannot compare {type(actual).__name__} with "
                f"{type(self.value).__name__}"
            ) from exc
        return HOLDS if held else Check(False, f"{self.describe()}: it is {as_json(actual)}")

    def to_json(self) -> Any:
        try:
            value = json.loads(as_json(self.value))
        except ValueError:  # a value without a JSON form (a range, say): its repr
            value = repr(self.value)
        return {"when": [self.key, self.op, value]}


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

    def check(self, deps: Deps, context: Mapping[str, Any]) -> Check:
        checks = [rule.check(deps, context) for rule in self.rules]
        if self.kind == "all_of":
            # A part made false by a failure decides the status, whatever its position.
            false = [c for c in checks if not c.held]
            return next((c for c in false if c.by_failure), false[0] if false else HOLDS)
        if self.kind == "any_of":
            if any(c.held for c in checks):
                return HOLDS
            reasons = "; ".join(c.reason for c in checks)
            return Check(False, f"any_of: none held ({reasons})", any(c.by_failure for c in checks))
        held = [rule for rule, c in zip(self.rules, checks, strict=True) if c.held]
        if not held:
            return HOLDS
        failed = any(rule.uses_status for rule in held) and any(
            status in FAILED_LIKE for _, status in deps
        )
        return Check(False, f"none_of: {json.dumps(held[0].to_json())} held", failed)

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


def implied(rule: TriggerRule, deps: Deps) -> Check:
    """A tree of context rules only also needs every dependency completed (checked before
    the input is even built: a failed dependency's input may not merge)."""
    if rule.uses_status:
        return HOLDS
    check = all_success.check(deps, {})
    if check.held:
        return HOLDS
    return Check(False, f"{check.reason} (a context rule needs all_success)", check.by_failure)


def verdict(rule: TriggerRule, deps: Deps, context: Mapping[str, Any]) -> Check:
    """Whether a task whose dependencies all finished runs, and if not, why."""
    check = implied(rule, deps)
    return check if not check.held else rule.check(deps, context)


def should_run(rule: TriggerRule, statuses: Sequence[str], context: Mapping[str, Any]) -> bool:
    """Whether a task whose dependencies all finished runs (True) or is not run (False)."""
    return verdict(rule, _anonymous(statuses), context).held
