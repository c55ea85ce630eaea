"""How fast the local OCR engine reads, in each way it could be run, measured side by side.

    python benchmarks/local_throughput.py                # about 2 minutes on 2 cores
    python benchmarks/local_throughput.py -n 300 --rounds 3 --json out.json
    python benchmarks/local_throughput.py --pair --rounds 9   # threads against processes

Reads the same N noisy demo-site captchas (``example_project/demo_site``) in every
configuration: worker threads sharing one engine (each thread with its own onnxruntime
sessions), or worker processes (each with its own engine), with one intra-op thread per
session or onnxruntime's default (one per core), and graph optimisation at onnxruntime's
default or off. The machine may be shared: the configurations are run in turn, round after
round (paired, interleaved), and each is quoted as the median of its rounds and as the median
of its per-round ratios to the plugin's default, so that a slow patch of the machine slows
every configuration of that round alike. A profile of one thread says where an image's time
goes: decoding and scaling it (Pillow), the first model, the gate, the second model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "example_project" / "demo_site"))
from captchas import ALPHANUMERIC, CaptchaMaker  # noqa: E402

from scrapy_capsolver_ocr.engines.local.engine import OcrEngine, model_input  # noqa: E402
from scrapy_capsolver_ocr.engines.local.gate import (  # noqa: E402
    read_best_path,
    wants_second_opinion,
)


@dataclass(frozen=True)
class Config:
    name: str
    kind: str  # "threads" or "processes"
    workers: int
    intra_op: int  # 0: onnxruntime's default
    optimised: bool = True
    second_opinion: bool = True


CONFIGS = (
    Config("threads, 2 workers, 1 intra-op thread", "threads", 2, 1),
    Config("processes, 2 workers, 1 intra-op thread", "processes", 2, 1),
    Config("threads, 1 worker, 2 intra-op threads", "threads", 1, 2),
    Config("threads, 2 workers, default intra-op threads", "threads", 2, 0),
    Config("threads, 2 workers, 1 intra-op thread, no graph optimisation", "threads", 2, 1, False),
    Config("threads, 1 worker, 1 intra-op thread", "threads", 1, 1),
    Config("threads, 2 workers, 1 intra-op thread, first model only", "threads", 2, 1, True, False),
)
BASELINE = CONFIGS[0].name


def _unoptimise(engine: OcrEngine) -> None:
    import onnxruntime

    for model in (engine.first, engine.second):
        if model is not None:
            model.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL


@contextmanager
def pool(config: Config) -> Iterator[Callable[[Sequence[bytes]], None]]:
    """A function that reads the images in ``config``'s way, its workers started and their
    sessions loaded. Processes are the plugin's own (each worker thread hands its image to
    a worker process and waits), as a crawl runs them."""
    processes = config.workers if config.kind == "processes" else 0
    engine = OcrEngine(
        intra_op_threads=config.intra_op,
        second_opinion=config.second_opinion,
        processes=processes,
    )
    if not config.optimised:
        _unoptimise(engine)
    with ThreadPoolExecutor(config.workers) as executor:

        def run(images: Sequence[bytes]) -> None:
            list(executor.map(lambda image: engine.read(image, ALPHANUMERIC), images))

        run(WARM_UP * config.workers)
        try:
            yield run
        finally:
            engine.close()


WARM_UP: list[bytes] = []


def profile(images: Sequence[bytes]) -> dict[str, float]:
    """Median milliseconds per image of each step, in one thread, first model alone."""
    engine = OcrEngine()
    first = engine.first
    assert engine.second is not None
    decode, run, gate, second = [], [], [], []
    wanted = 0
    for image in images[: min(len(images), 300)]:
        t0 = time.perf_counter()
        values = model_input(image)
        t1 = time.perf_counter()
        probabilities = first.probabilities(values)
        t2 = time.perf_counter()
        reading = read_best_path(probabilities, first.alphabet(ALPHANUMERIC))
        t3 = time.perf_counter()
        decode.append(t1 - t0)
        run.append(t2 - t1)
        gate.append(t3 - t2)
        if wants_second_opinion(reading):
            wanted += 1
            engine.second.read(values, ALPHANUMERIC)
            second.append(time.perf_counter() - t3)
    return {
        "decode_and_scale": statistics.median(decode) * 1000,
        "first_model": statistics.median(run) * 1000,
        "softmax_and_gate": statistics.median(gate) * 1000,
        "second_model": statistics.median(second) * 1000 if second else 0.0,
        "second_opinion_share": wanted / len(decode),
    }


def measure(images: list[bytes], rounds: int, configs: Sequence[Config]) -> dict[str, Any]:
    rates: dict[str, list[float]] = {config.name: [] for config in configs}
    for turn in range(rounds):
        # Each round starts with another configuration, so that none is always first.
        order = list(configs[turn % len(configs) :]) + list(configs[: turn % len(configs)])
        for config in order:
            with pool(config) as read:
                started = time.perf_counter()
                read(images)
                rates[config.name].append(len(images) / (time.perf_counter() - started))
        print(f"round {turn + 1}/{rounds} done", file=sys.stderr, flush=True)
    results = []
    for config in configs:
        ratios = [
            rate / base for rate, base in zip(rates[config.name], rates[BASELINE], strict=True)
        ]
        results.append(
            {
                **asdict(config),
                "rates": rates[config.name],
                "median": statistics.median(rates[config.name]),
                "ratio_median": statistics.median(ratios),
            }
        )
    return {"images": len(images), "rounds": rounds, "configs": results}


def table(measured: dict[str, Any]) -> list[str]:
    lines = [
        "| configuration | images/s (median) | each round | ratio to the default (median) |",
        "|---|---:|---|---:|",
    ]
    for result in measured["configs"]:
        rounds = ", ".join(f"{rate:.0f}" for rate in result["rates"])
        lines.append(
            f"| {result['name']} | {result['median']:.0f} | {rounds} | "
            f"{result['ratio_median']:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--images", type=int, default=400, help="captchas per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pair", action="store_true", help="only the default and worker processes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    maker = CaptchaMaker.noisy()
    images = [maker.render(maker.new_answer()) for _ in range(args.images)]
    WARM_UP.extend(images[:4])
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    steps = profile(images)
    measured = measure(images, args.rounds, CONFIGS[:2] if args.pair else CONFIGS)
    measured["profile_ms"] = steps
    measured["load_after"] = os.getloadavg()[0]
    print("\n".join(table(measured)))
    print(
        "\none thread, median ms per image: "
        + ", ".join(f"{name} {value:.2f}" for name, value in steps.items())
    )
    if args.json:
        args.json.write_text(json.dumps(measured, indent=1))


if __name__ == "__main__":
    main()
