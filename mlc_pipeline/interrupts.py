"""An interrupt Python swallowed, delivered again at the next safe point.

A Ctrl-C (or SIGTERM, turned into one by the CLI) that arrives while the garbage collector runs a
finalizer or a `__del__` (urllib3 closing a connection pool, say) is raised inside it, and Python
only prints "Exception ignored in: <finalize object ...> KeyboardInterrupt" and goes on: the run
kept training, mined and exited 0 (audit dayone26 D2). `install` (the CLI does it) keeps such an
interrupt instead; `check`, called at the safe points (between stages, at each training batch and
epoch, and when a command returns), raises it again, so the command stops as docs/reliability.md
says: exit 130 (143 for SIGTERM) and one line. Without `install` (the library, a Prefect flow),
`check` does nothing."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

_lost: list[type[KeyboardInterrupt]] = []      # the kind (KeyboardInterrupt, or the CLI's Terminated)
_previous_hook = None


def _keep_lost_interrupt(unraisable) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _lost.append(type(unraisable.exc_value))
        log.debug("an interrupt arrived inside %r; raised again at the next safe point", unraisable.object)
        return
    _previous_hook(unraisable)


def install() -> None:
    """From now on an interrupt raised in a finalizer or `__del__` is kept for `check`. Forgets one
    kept before (each command starts afresh)."""
    global _previous_hook
    _lost.clear()
    if sys.unraisablehook is not _keep_lost_interrupt:
        _previous_hook = sys.unraisablehook
        sys.unraisablehook = _keep_lost_interrupt


def check() -> None:
    """Raise the interrupt a finalizer swallowed, if one did."""
    if _lost:
        kind = _lost[0]
        _lost.clear()
        raise kind()
