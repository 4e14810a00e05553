"""Who holds a claim: worker ids that tell a dead local process from a live remote one."""

from __future__ import annotations

import os
import secrets
import socket

HOST = socket.gethostname()


def new_worker_id() -> str:
    """``host:pid:random``: enough to tell a dead local process from a live remote one."""
    return f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_dead(worker_id: str) -> bool:
    """True only when the claim's process is on this host and no longer exists."""
    host, _, rest = worker_id.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
