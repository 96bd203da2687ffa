"""One `Downloader.run_into`'s jobs as its workers take them, deferred ones included.

A photo answered HTTP 429 is deferred, not slept on: it goes back into the batch with the time it
may be asked again, and the worker takes the next photo meanwhile (audit collect27 D6: the wait held a
worker, so 30% of photos answering 429 once made a collect 4.3x slower). The 429 pauses its host
(`HostHealth.pause`): the host's other photos a worker takes meanwhile are deferred to the same time
without being asked (collect30). The per-host bound (`source.per_host_concurrency`) still caps the
connections to each host."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


class Deferred(Exception):
    """The host asked us to wait (a 429, its own or another photo's): ask again at `at` (time.monotonic()), from
    its attempt `attempt` on, within its own deadline `deadline`."""

    def __init__(self, at: float, attempt: int, deadline: float):
        super().__init__(f"deferred until {at:.1f}")
        self.at, self.attempt, self.deadline = at, attempt, deadline


@dataclass
class Batch:
    """The jobs to take (each with where its attempts stand: (job, ()) for a fresh one, (job, (first
    attempt, deadline)) for a deferred one: `Downloader.fetch`'s arguments after the job),
    those deferred until a time, and what each ended as, in completion order (a result, or the
    exception its fetch raised). `done` only grows: the caller's count of results handed over says
    exactly which are not yet."""
    todo: list[tuple[Any, tuple]]
    done: list[tuple[Any, object]] = field(default_factory=list)
    later: list[tuple[float, Any, int, float]] = field(default_factory=list)    # (at, job, attempt, deadline)
    active: int = 0                    # jobs a worker has taken and not ended
    closed: bool = False               # the run stops: no job is taken any more
    cond: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def of(cls, jobs: list) -> "Batch":
        return cls([(job, ()) for job in reversed(jobs)])

    def take(self) -> tuple[Any, tuple] | None:
        """The next job to fetch (waiting for a deferred one's time), or None: the run stops, or no
        job is left and none is running (a running one may yet be deferred)."""
        with self.cond:
            while True:
                if self.closed:
                    return None
                now = time.monotonic()
                due = [d for d in self.later if d[0] <= now]
                for d in due:
                    self.later.remove(d)
                    self.todo.append((d[1], (d[2], d[3])))
                if self.todo:
                    self.active += 1
                    return self.todo.pop()
                if not self.later and not self.active:
                    return None
                self.cond.wait(min((d[0] for d in self.later), default=now + 1.0) - now)

    def finish(self, job: Any, outcome: object) -> None:
        """A taken job ended: `outcome` is handed over, or, Deferred, the job waits its time."""
        with self.cond:
            if isinstance(outcome, Deferred):
                self.later.append((outcome.at, job, outcome.attempt, outcome.deadline))
            else:
                self.done.append((job, outcome))
            self.active -= 1
            self.cond.notify_all()

    def idle(self) -> bool:
        """Nothing runs and nothing will (the watchdog's end)."""
        with self.cond:
            return (self.closed or not (self.todo or self.later)) and not self.active
