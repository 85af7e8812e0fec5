"""This process and others on this host: whether a pid is alive, the host name (lock files)."""

from __future__ import annotations

import os
import socket

__all__ = ["hostname", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def hostname() -> str:
    """This machine's name, as recorded in lock files."""
    return socket.gethostname()
