"""Readers that worker processes build in the tests of
:class:`~scrapy_capsolver_ocr.engines.local.workers.WorkerProcesses` (imported by the child
processes, so kept free of test-only imports)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any


def scripted(exit_code: int) -> Callable[..., Any]:
    """A reader that obeys its first argument: ``crash`` exits the process at once, ``fail``
    raises, ``sleep`` sleeps a second, ``print`` writes to stdout, ``nice`` and ``pid`` say
    what they name; anything else comes back as it was sent."""

    def read(command: str, *args: Any) -> Any:
        if command == "crash":
            os._exit(exit_code)
        if command == "fail":
            raise ValueError("no such image")
        if command == "sleep":
            time.sleep(1)
        if command == "print":
            print("noise a library printed")
            sys.stdout.flush()
        if command == "nice":
            return os.getpriority(os.PRIO_PROCESS, 0)
        if command == "pid":
            return os.getpid()
        return (command, *args)

    return read
