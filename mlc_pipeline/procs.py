"""Whether the process that wrote a temp file is still alive: leftovers of killed runs carry the
writer's pid in their name (downloads, model bundles), and only dead writers' leftovers are removed."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
