"""OpenTelemetry spans (``pip install 'durably[otel]'``): one per execution, per task attempt
and per saga step, and a participant's span joined to its saga's trace through the request's
message headers.

Off unless the application configured a tracer provider, and then free: :func:`tracer`
returns None without importing anything when ``opentelemetry.trace`` was never imported
(nobody configured tracing), or when the global provider is still the API's proxy or no-op
one. Callers test that once and take their plain path.

The trace context travels as the global propagator's carrier (W3C ``traceparent`` by
default): in a saga request's headers, and as JSON text on the execution's row
(``trace_context``), so a worker's attempt spans are children of the span that started the
execution, whichever process runs them. That span lasts as long as ``engine.run`` in
process; for ``engine.start`` it covers the queueing, and the attempts follow it later.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

_cache: tuple[Any, Any] | None = None  # (provider, its durably tracer)


def tracer() -> Tracer | None:
    """durably's tracer from the configured global provider, or None (tracing is off)."""
    global _cache
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    provider = api.get_tracer_provider()
    if isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider):
        return None
    cached = _cache
    if cached is not None and cached[0] is provider:
        return cached[1]  # type: ignore[no-any-return]
    from . import __version__

    found = provider.get_tracer("durably", __version__)
    _cache = (provider, found)
    return found  # type: ignore[no-any-return]


def carrier() -> str | None:
    """The current span's context as JSON text (to store), or None when there is none."""
    if tracer() is None:
        return None
    headers: dict[str, str] = {}
    inject(headers)
    return json.dumps(headers, separators=(",", ":")) if headers else None


def inject(headers: dict[str, str]) -> None:
    """Add the current trace context to a message's headers (nothing when tracing is off)."""
    if tracer() is None:
        return
    from opentelemetry import propagate

    propagate.inject(headers)


def _parent(headers: Mapping[str, str] | str | None) -> Any:
    if headers is None:
        return None
    if isinstance(headers, str):
        try:
            decoded = json.loads(headers)
        except ValueError:
            return None
        headers = decoded if isinstance(decoded, dict) else {}
    from opentelemetry import propagate

    return propagate.extract(dict(headers))


@contextlib.contextmanager
def span(
    found: Tracer,
    name: str,
    attributes: Mapping[str, Any],
    *,
    parent: Mapping[str, str] | str | None = None,
    kind: str = "INTERNAL",
    ok: tuple[type[BaseException], ...] = (),
) -> Iterator[Span]:
    """A current span named ``name``; its parent is the context carried by ``parent``
    (headers, or stored JSON text) when given, else the current span. An exception marks it
    failed, except those in ``ok`` (a saga pausing is not an error)."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attrs = {key: value for key, value in attributes.items() if value is not None}
    with found.start_as_current_span(
        name,
        context=_parent(parent),
        kind=SpanKind[kind],
        attributes=attrs,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except ok:
            raise
        except BaseException as exc:
            current.record_exception(exc)
            current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise


def participant(target: str, headers: Mapping[str, str]) -> contextlib.AbstractContextManager[Any]:
    """A saga participant's span, a child of the step that sent the request (whose context
    the request's headers carry)."""
    found = tracer()
    if found is None:
        return contextlib.nullcontext()
    from .saga_messages import HEADER_SAGA, HEADER_STEP

    attrs = attributes(headers.get(HEADER_SAGA), task=headers.get(HEADER_STEP))
    attrs["messaging.destination.name"] = target
    name = f"durably.participant {target}"
    return span(found, name, attrs, parent=headers, kind="CONSUMER")


def annotate(**values: Any) -> None:
    """Set ``durably.<key>`` attributes on the current span (known after it started)."""
    from opentelemetry import trace

    current = trace.get_current_span()
    for key, value in values.items():
        current.set_attribute(f"durably.{key}", str(value))


def attributes(
    execution_id: Any = None,
    workflow: str | None = None,
    task: str | None = None,
    attempt: int | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The span attributes of the log fields (SPEC §8), under ``durably.``."""
    found = {
        "durably.execution_id": str(execution_id) if execution_id is not None else None,
        "durably.workflow": workflow,
        "durably.task": task,
        "durably.attempt": attempt,
    }
    found.update({f"durably.{key}": value for key, value in more.items()})
    return found
