"""The solutions of each session, kept until a follow-up request uses them.

A session is the ``cookiejar`` meta value (no value is one default session), because a site
keeps the captcha it expects in the session: a solution is only good in its own session.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from scrapy import Request

from ..solution import CaptchaSolution

#: Solutions kept per session: a spider that never injects must not grow the memory.
MAX_PER_SESSION = 16
#: Sessions kept: crawls with one cookiejar per item would otherwise never forget one.
MAX_SESSIONS = 10_000


@dataclass
class SolvedCaptcha:
    """A solution and the request whose captcha it answers (the chain's ``origin``),
    which is scheduled again when the site rejects the answer."""

    solution: CaptchaSolution
    origin: Request | None
    attempt: int
    #: Order in which the images were obtained: a site expects the last one it served.
    order: int
    used: bool = field(default=False)


class SessionSolutions:
    """Per-session solutions, newest last."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[Hashable, list[SolvedCaptcha]] = OrderedDict()

    def add(self, session: Hashable, solved: SolvedCaptcha) -> None:
        entries = self._sessions.setdefault(session, [])
        self._sessions.move_to_end(session)
        entries.append(solved)
        entries.sort(key=lambda entry: entry.order)
        del entries[:-MAX_PER_SESSION]
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

    def newest_unused(self, session: Hashable) -> SolvedCaptcha | None:
        """The newest solution of ``session`` that no request has used yet."""
        for entry in reversed(self._sessions.get(session, ())):
            if not entry.used:
                return entry
        return None

    def find(self, session: Hashable, chosen: CaptchaSolution | str) -> SolvedCaptcha | None:
        """The newest entry of ``session`` for a solution the spider chose itself (used or
        not: the spider decides), or None if it was not solved in this session."""
        for entry in reversed(self._sessions.get(session, ())):
            if isinstance(chosen, str):
                if entry.solution.text == chosen:
                    return entry
            elif (entry.solution.task_id, entry.solution.image_sha256) == (
                chosen.task_id,
                chosen.image_sha256,
            ):
                return entry
        return None
