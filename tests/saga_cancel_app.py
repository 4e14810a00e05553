"""A saga module for ``durably cancel`` on a saga: a local step with a compensation, then a
remote step to a service nobody serves, so that the execution stays paused on it."""

from __future__ import annotations

from durably import Saga, SagaContext, SagaRequest


def book(ctx: SagaContext) -> None:
    ctx["booked"] = True


def unbook(ctx: SagaContext) -> None:
    ctx["booked"] = False
    ctx["unbooked"] = True


def pay(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("nobody-serves-this", {"order": ctx["order"]})


saga = Saga().local_step(book).on_failure(unbook).remote_step(pay).commit()
