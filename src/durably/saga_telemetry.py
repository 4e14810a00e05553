"""Spans and metrics of a saga run: one span per execution run and per step, and the steps
counted by outcome (finished, failed, paused). With neither tracing nor metrics on, each hook
is a shared no-op context manager."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

from . import metrics, tracing
from .saga_runtime import Paused, StepFailed

if TYPE_CHECKING:
    from .saga import SagaStep

_OFF = contextlib.nullcontext()


def run(saga: str, uuid: UUID, trace: str | None) -> contextlib.AbstractContextManager[Any]:
    """Around one run of an execution (until it finishes, errors or pauses): a child of
    ``trace``, the first run's stored span context, when given."""
    found = tracing.tracer()
    if found is None:
        return _OFF
    attrs = tracing.attributes(uuid, saga=saga)
    return tracing.span(found, f"durably.saga {saga}", attrs, parent=trace, ok=(Paused,))


def step(
    saga: str, uuid: UUID, path: str, step: SagaStep
) -> contextlib.AbstractContextManager[Any]:
    """Around one step; a remote step's request goes out inside it, carrying its context."""
    found = tracing.tracer()
    if found is None and metrics.active is None:
        return _OFF
    return _step(found, saga, uuid, path, step)


@contextlib.contextmanager
def _step(found: Any, saga: str, uuid: UUID, path: str, step: SagaStep) -> Iterator[None]:
    outcome = "finished"
    try:
        with (
            tracing.span(
                found,
                f"durably.saga_step {saga} {path}",
                tracing.attributes(uuid, task=path, saga=saga, step=step.kind),
                ok=(Paused,),
            )
            if found is not None
            else _OFF
        ):
            yield
    except Paused:
        outcome = "paused"
        raise
    except StepFailed:
        outcome = "failed"
        raise
    finally:
        if metrics.active is not None:
            metrics.active.saga_step(saga, outcome)
