"""Who may act: the CSRF check every action passes, and the access token actions need when
the dashboard listens beyond this machine.

- Every action is a POST carrying ``csrf``, a secret made when the process starts and
  embedded in the pages' forms (another site cannot read the pages, so it cannot forge it);
  a request whose ``Origin`` is another host is refused as well.
- Bound to a loopback address, the dashboard answers only requests addressed to a loopback
  name (``Host``), so a page of another site cannot reach it through DNS rebinding.
- With a token (``--token`` / ``DURABLY_DASHBOARD_TOKEN``, required off loopback), actions also
  need it: the ``token`` form field, an ``Authorization: Bearer`` header, or the cookie that
  ``/login`` sets (HttpOnly, SameSite=Strict).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

COOKIE = "durably_dashboard_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the dashboard on this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> list[str]:
    """The ``Host`` names to answer when listening on ``host``; ``ValueError`` when ``host``
    is not a loopback address and there is no token to protect the actions."""
    if is_loopback(host):
        return list(LOOPBACK_NAMES)
    if not token:
        raise ValueError(
            f"refusing to listen on {host}: beyond this machine the actions need an access "
            "token (--token TOKEN or DURABLY_DASHBOARD_TOKEN); or listen on 127.0.0.1"
        )
    return ["*"]


class Refused(Exception):
    """An action refused before anything ran; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Guard:
    token: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def check(
        self, form: Mapping[str, str], headers: Mapping[str, str], cookies: Mapping[str, str]
    ) -> None:
        """Raise :class:`Refused` unless the request may act."""
        self.check_forgery(form, headers)
        if self.token is None:
            return
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        given = [form.get("token"), bearer, cookies.get(COOKIE)]
        if not any(_same(value, self.token) for value in given if value):
            raise Refused(
                "this action needs the dashboard's access token: log in at /login "
                "(or send the token field or an Authorization: Bearer header)",
                status=401,
            )

    def check_forgery(self, form: Mapping[str, str], headers: Mapping[str, str]) -> None:
        """Raise :class:`Refused` for a request another site may have made (``/login`` too)."""
        origin = headers.get("origin")
        host = headers.get("host", "").lower()
        if origin and origin != "null" and urlsplit(origin).netloc.lower() != host:
            raise Refused(f"cross-origin request refused (Origin {origin})")
        if not _same(form.get("csrf") or headers.get("x-csrf-token"), self.csrf):
            raise Refused(
                "missing or invalid CSRF token: reload the page and submit the form again"
            )

    def login(self, given: str | None) -> bool:
        """Whether ``given`` is the access token (``/login``)."""
        return self.token is not None and _same(given, self.token)
