"""Suggestions asked ahead: a slot that frees never waits for a fit. Pure.

An adaptive search (Ax) takes seconds to propose a trial: a GP fit, then the acquisition.
Asked when a slot frees, the slot waits that long. So the daemon asks each adaptive study
for a few trials ahead of need (the study's `ask_ahead`, `ASK_AHEAD` unless it says, at
most its `parallel`), and a slot that frees starts one of them at once, with no search
call on the way. The price: a trial asked ahead has not seen the results that come while
it waits. With `parallel = 1` the next trial is proposed while the run before it goes,
so without its result, as if two ran at once; `ask_ahead = 0` makes the slot wait for
each fit instead. When a result
reaches the search, the suggestions asked with less data are stale: they are asked again
in the background, and the stale ones withdrawn.

Where they live. A suggestion asked ahead is a trial with its pending runs in the store,
stored with the search state that proposed it in one transaction, exactly as a trial asked
when a slot frees (hypd/studies.py). Nothing new can go wrong across a crash: the store
and the stored search state agree on which trials exist. The replacement is one
transaction too: the stale trial goes, its pending runs take the fresh trial's parameters
(the run numbers stay), and the state that has the stale one withdrawn and the fresh one
proposed is stored with them. Held by the daemon only (not stored), they would be trials
the search knows of and the store does not, to be reconciled at each start.

What the daemon keeps in memory is only this module's `AheadQueue`: which pending trials
it asked ahead, when each was ready and with how many results, and the lead times of the
launches. After a restart the trials asked ahead are plain pending runs: launched as they
are, never replaced (at worst one suggestion made with a result less).

A withdrawn trial is not a pending point of the search any more, and it does not count
against `max_trials` (`Suggester.withdraw`).

Between the daemon's two paths, claims in memory on the event loop. The refresh claims
the stale trials before it asks (`claim`), but a slot that frees during the fit still
takes one (`take`): a stale suggestion run now beats a GPU idle for a fit. Once the fit is
done, the refresh `commit`s to replacing those still there, and from then until its
transaction is stored (withdrawing them from the search, storing the state: no fit) the
dispatcher leaves them be. A trial the dispatcher took is never replaced; its fresh
counterpart joins the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import median

ASK_AHEAD = 1  # suggestions kept ready per adaptive study, unless it says (at most its `parallel`)
LEADS_KEPT = 20  # the launches whose lead times the summary is over


@dataclass(frozen=True)
class Asked:
    """A trial asked ahead: when it was ready, and how many results the search had then."""

    trial: int
    ready_at: float
    results: int


def refresh_plan(queued: Sequence[Asked], results: int, depth: int, room: int) -> tuple[list[int], int]:
    """What to ask now: (the queued trials to replace, how many more to ask ahead).

    A queued trial is stale once the search has more results than when it was asked.
    `depth`: how many should be ready; `room`: how many new trials the study may still
    have (its max_trials less its trials; 0 when paused or its search is exhausted). A
    replacement takes no room (the stale trial goes)."""
    stale = [a.trial for a in queued if a.results < results]
    add = max(0, min(depth - len(queued), room))
    return stale, add


def depth_for(parallel: int, ahead: int = ASK_AHEAD) -> int:
    return max(0, min(ahead, parallel))


@dataclass
class AheadQueue:
    """One study's suggestions asked ahead (trials), and what their launches saw."""

    asked: dict[int, Asked] = field(default_factory=dict)
    refreshing: dict[int, Asked] = field(default_factory=dict)  # claimed, being asked again; still launchable
    withdrawing: set[int] = field(default_factory=set)  # being replaced: not to be launched
    results: int = 0  # results told to the search since the daemon started
    leads: deque[float] = field(default_factory=lambda: deque(maxlen=LEADS_KEPT))
    behind: deque[int] = field(default_factory=lambda: deque(maxlen=LEADS_KEPT))  # results since each was asked
    replaced: int = 0  # suggestions asked again with more data

    def queued(self) -> list[Asked]:
        return sorted(self.asked.values(), key=lambda a: a.trial)

    def add(self, trials: Iterable[int], now: float, results: int) -> None:
        for trial in trials:
            self.asked[trial] = Asked(trial, now, results)

    def keep(self, pending: Iterable[int]) -> None:
        """Only the trials still pending stay queued (a user may kill a pending run)."""
        still = set(pending)
        for trial in [t for t in self.asked if t not in still]:
            del self.asked[trial]

    def claim(self, trials: Iterable[int]) -> None:
        """The refresh asks these again (a slot may still take them meanwhile)."""
        for trial in trials:
            if (asked := self.asked.pop(trial, None)) is not None:
                self.refreshing[trial] = asked

    def commit(self, limit: int) -> list[int]:
        """The refresh has fresh trials for `limit` of its claimed ones: those still
        untaken (up to `limit`) are to be replaced, and no longer launchable; any others
        are queued again."""
        chosen = sorted(self.refreshing)[:limit]
        self.withdrawing.update(chosen)
        for trial in chosen:
            del self.refreshing[trial]
        self.asked.update(self.refreshing)
        self.refreshing.clear()
        return chosen

    def settle(self) -> None:
        """The refresh is over (stored or failed): what it was replacing is gone from the
        queue, and whatever it still held claimed is queued again."""
        self.withdrawing.clear()
        self.asked.update(self.refreshing)
        self.refreshing.clear()

    def launchable(self, trial: int) -> bool:
        return trial not in self.withdrawing

    def take(self, trial: int, now: float) -> bool:
        """The dispatcher launches a run of `trial`: False if it is being replaced. A trial
        asked ahead leaves the queue with its lead time recorded."""
        if trial in self.withdrawing:
            return False
        asked = self.asked.pop(trial, None) or self.refreshing.pop(trial, None)
        if asked is not None:
            self.leads.append(max(0.0, now - asked.ready_at))
            self.behind.append(self.results - asked.results)
        return True

    def asked_on_path(self, count: int) -> None:
        """Trials asked when their slots freed (nothing was ready): a lead of 0."""
        self.leads.extend([0.0] * count)
        self.behind.extend([0] * count)

    def summary(self) -> dict[str, float | int | None]:
        """As hypd/ipc.py's AheadSummary."""
        return {"ready": len(self.asked) + len(self.refreshing),
                "lead": float(median(self.leads)) if self.leads else None,
                "behind": float(median(self.behind)) if self.behind else None, "replaced": self.replaced,
                "launches": len(self.leads)}
