"""Training a site's model during a crawl, in a process of its own.

When a site has ``CAPSOLVER_LEARN_MIN_LABELS`` labels newer than its last training, and this
process holds the site's training lease (:mod:`.shelf`), :class:`CrawlTrainer` starts one
training: a child process (``python -m`` this module, not ``multiprocessing``, whose spawned
children would run the crawl's own script again) at a low priority, with its numerical
libraries on one thread each, that calls :func:`~.training.train_model`. The reactor only
waits for its answer (a worker thread talks to the child). One training at a time per
process; a failed or crashed training is logged and counted, and the crawl goes on; at crawl
end a running training is stopped. A promoted model is published on the shelf, where every
process of the crawl or the fleet finds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from scrapy.statscollectors import StatsCollector

from ..local.workers import NICENESS, WorkerThreads, receive_frame, send_frame
from .labels import LabelStore, StoredLabel
from .shelf import ModelShelf

if TYPE_CHECKING:
    from .training import TrainingReport

logger = logging.getLogger(__name__)

#: One thread for every numerical library the trainer may use: the crawl keeps the others.
THREAD_LIMITS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}


class TrainingFailed(RuntimeError):
    """The training process reported an error, or exited before it answered."""


@dataclass(frozen=True)
class TrainingJob:
    """What the training process is given (pickled over its standard input)."""

    site: str
    #: (image bytes, answer, source) of each label, oldest first.
    labels: list[tuple[bytes, str, str]]
    output: str
    previous: str | None
    seed: int = 0


class TrainingProcess:
    """One training in a child process. :meth:`run` blocks until it ends: call it in a
    worker thread. :meth:`stop` (any thread) ends it early."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self.process: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def stopped(self) -> bool:
        return self._stopped

    def run(self) -> TrainingReport:
        env = {**os.environ, **THREAD_LIMITS}
        argv = [sys.executable, "-m", __name__]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        try:
            if self._stopped:
                raise EOFError
            # Its input stays open while it trains: it ends when the crawl's process is gone.
            send_frame(process.stdin, dataclasses.asdict(self.job))
            outcome, value = receive_frame(process.stdout)
        except (EOFError, OSError):
            process.kill()
            code = process.wait()
            raise TrainingFailed(
                f"the training process {process.pid} exited (code {code}) before it answered"
            ) from None
        finally:
            with contextlib.suppress(OSError):  # a broken pipe: the process is gone
                process.stdin.close()
            process.stdout.close()
        process.wait()
        if outcome == "error":
            raise TrainingFailed(f"the training process failed: {value}")
        # Unpickled here, in the worker thread: the report's module is imported off the reactor.
        report: TrainingReport = value
        return report

    def stop(self) -> None:
        self._stopped = True
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.terminate()


@dataclass(frozen=True)
class TrainerOptions:
    #: New labels of a site before it is (re)trained.
    min_labels: int
    #: Where a training writes its model before it is published.
    workdir: Path
    seed: int = 0


class CrawlTrainer:
    """Decides when a site is trained, trains it off the crawl, and publishes what is
    promoted. ``on_model(site, version)`` is told of each model this process published."""

    def __init__(
        self,
        options: TrainerOptions,
        labels: LabelStore,
        shelf: ModelShelf,
        stats: StatsCollector,
        reactor: Any,
        on_model: Callable[[str, int], Any],
    ) -> None:
        self._options = options
        self._labels = labels
        self._shelf = shelf
        self._stats = stats
        self._on_model = on_model
        self._thread = WorkerThreads(1, reactor, name="capsolver-learn-training")
        self._checking = False
        self._closed = False
        #: The training running in this process, if any.
        self.training: TrainingProcess | None = None

    def __repr__(self) -> str:
        running = self.training.job.site if self.training is not None else None
        return f"CrawlTrainer(min_labels={self._options.min_labels}, training={running!r})"

    async def consider(self, site: str) -> None:
        """Train ``site`` now if it has enough new labels and nobody else trains it. Never
        raises: learning never stops the crawl."""
        if self._checking or self.training is not None or self._closed:
            return
        self._checking = True
        try:
            await self._consider(site)
        except Exception as exc:
            if self._closed:
                logger.debug("Training a model of %s ended with the crawl: %s", site, exc)
                return
            self._stats.inc_value("capsolver/learn/trainings_failed")
            logger.error("Training a model of %s failed: %s", site, exc)
        finally:
            self._checking = False

    async def _consider(self, site: str) -> None:
        since = await self._shelf.attempted(site)
        if await self._labels.newer(site, since) < self._options.min_labels:
            return
        lease = await self._shelf.lease(site)
        if lease is None:
            return  # another process trains it
        try:
            # Looked at again under the lease: the holder before may just have trained it.
            since = await self._shelf.attempted(site)
            if await self._labels.newer(site, since) < self._options.min_labels:
                return
            labels = await self._labels.labels(site)
            if labels and not self._closed:
                await self._train(site, labels)
        finally:
            await lease.release()

    async def _train(self, site: str, labels: Sequence[StoredLabel]) -> None:
        newest = max(label.when for label in labels)
        output = self._options.workdir / f"training-{os.getpid()}-{uuid.uuid4().hex[:8]}.onnx"
        # The newest published model is the one to beat (and gives the next version).
        version = (await self._shelf.published()).get(site)
        previous = await self._shelf.fetch(site, version) if version is not None else None
        job = TrainingJob(
            site=site,
            labels=[
                (label.image, label.text, label.source)
                for label in sorted(labels, key=lambda label: label.when)
            ],
            output=str(output),
            previous=str(previous) if previous is not None else None,
            seed=self._options.seed,
        )
        training = self.training = TrainingProcess(job)
        logger.info("Training a model of %s on %d labels (own process)", site, len(labels))
        try:
            outcome = await self._thread.run(_run_in_workdir, self._options.workdir, training)
        except TrainingFailed:
            if training.stopped:
                logger.info("Stopped the training of a model of %s (the crawl ended)", site)
                return
            # The labels seen are marked: a training that crashes is not started at once again.
            await self._shelf.mark_attempted(site, newest)
            raise
        finally:
            self.training = None
        await self._shelf.mark_attempted(site, newest)
        if not outcome.promoted:
            logger.info(
                "The model trained for %s was not promoted (%s); held-out accuracy %.3f",
                site,
                outcome.reason,
                outcome.heldout_accuracy,
            )
            return
        self._stats.inc_value("capsolver/learn/models_trained")
        if await self._shelf.publish(site, output, outcome.version):
            logger.info(
                "Trained model v%d of %s in %.0f s: held-out accuracy %.3f, answers %.0f %% "
                "locally at %.1f %% precision",
                outcome.version,
                site,
                outcome.seconds,
                outcome.heldout_accuracy,
                outcome.coverage * 100,
                outcome.precision * 100,
            )
            await self._on_model(site, outcome.version)

    async def close(self) -> None:
        """Stop a running training and wait for its thread (the crawl has ended)."""
        self._closed = True
        if self.training is not None:
            self.training.stop()
        await self._thread.stop()


def _run_in_workdir(workdir: Path, training: TrainingProcess) -> TrainingReport:
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return training.run()
    except TrainingFailed:
        # Whatever a stopped or crashed training left half written.
        output = Path(training.job.output)
        output.unlink(missing_ok=True)
        output.with_name(f"{output.name}.partial").unlink(missing_ok=True)
        raise


def _exit_at_end_of(stream: IO[bytes]) -> None:
    stream.read()
    os._exit(0)


def _serve() -> None:
    """The training process: one job from standard input, its outcome to standard output."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the crawl decides when to stop
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Whatever the training libraries print must not corrupt the answer.
    sys.stdout = sys.stderr
    job = TrainingJob(**receive_frame(stdin))
    # The crawl closes this input when it has the answer, or when it is gone (killed, say):
    # nobody is left to use the model then.
    threading.Thread(target=_exit_at_end_of, args=(stdin,), daemon=True).start()
    try:
        from .training import Label, train_model

        report = train_model(
            [Label(image, text, source) for image, text, source in job.labels],
            Path(job.output),
            site=job.site,
            previous=Path(job.previous) if job.previous is not None else None,
            seed=job.seed,
        )
        answer: tuple[str, Any] = ("ok", report)
    except Exception as exc:  # the crawl logs it; the process ends either way
        answer = ("error", f"{type(exc).__name__}: {exc}")
    send_frame(stdout, answer)  # written and flushed
    # Not a normal interpreter exit: its shutdown would race the thread still reading the
    # input, and Python aborts (SIGABRT) when a daemon thread holds stdin's buffer then.
    os._exit(0)


if __name__ == "__main__":
    _serve()
