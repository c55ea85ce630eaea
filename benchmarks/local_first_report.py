"""Writes docs/local-first.md (and its JSON) from the measurements of bench_local_first.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from local_throughput import table

TARGETS = {"noisy": 0.6, "digits": 0.25}


def pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def machine(facts: dict[str, Any]) -> list[str]:
    versions = facts["versions"]
    return [
        "| machine |  |",
        "|---|---|",
        f"| CPUs (nproc) | {facts['nproc']} |",
        f"| CPU | {facts['cpu']} |",
        f"| Python | {facts['python']} |",
        f"| Scrapy / Twisted | {versions['scrapy']} / {versions['twisted']} |",
        f"| load average before / after | {facts['load_before'][0]:.2f} / "
        f"{facts['load_after'][0]:.2f} |",
    ]


def summary(results: dict[str, Any]) -> list[str]:
    logins, reactor = results["logins"], results["reactor"]
    lines = [
        "| measure | result | target |  |",
        "|---|---|---|---|",
    ]
    for style, target in TARGETS.items():
        local = logins[style]["local_first"]
        cloud = logins[style]["cloud_only"]
        paid = logins[style]["spread"]["paid_per_login"]
        lines.append(
            f"| paid createTask per successful login, {style} captchas | "
            f"**{paid['median']:.2f}** (median of {len(logins[style]['local_first_runs'])} "
            f"runs: {paid['min']:.2f} to {paid['max']:.2f}; "
            f"{local['paid_per_login_steady']:.2f} once the format is learnt); "
            f"CapSolver only: {cloud['paid_per_login']:.2f} | <= {target} "
            f"| {met(paid['max'] <= target)} |"
        )
    for style in ("noisy", "digits"):
        local = logins[style]["local_first"]
        refused = logins[style]["spread"]["refused_per_login"]
        lines.append(
            f"| answers the site refused per login, {style} | "
            f"**{refused['median']:.3f}** ({refused['min']:.3f} to {refused['max']:.3f}) | "
            f"<= 0.1 | {met(refused['max'] <= 0.1)} |"
        )
        lines.append(
            f"| logins that succeed, {style} | **{pct(local['success'])}** "
            f"({local['succeeded']} of {local['logins']}) | 100 % | "
            f"{met(local['success'] == 1.0)} |"
        )
    bad = logins["gvcode"]["local_first"]
    lines.append(
        f"| gvcode's look (read badly): local answers refused per login | "
        f"**{bad['local_refused_per_login']:.3f}**; {pct(bad['local_solved'] / bad['solved'])} "
        f"of the solves local, paid per login {bad['paid_per_login']:.2f}, "
        f"{pct(bad['success'])} logins succeed | < 0.1 | "
        f"{met(bad['local_refused_per_login'] < 0.1)} |"
    )
    ratio = page_ratio(reactor)
    lines.append(
        f"| page rate while {reactor['local_solves']} captchas are read locally | "
        f"**{ratio:.2f}** of the rate of pages alone | >= 0.8 | {met(ratio >= 0.8)} |"
    )
    default = results["throughput"]["configs"][0]
    lines.append(
        f"| engine throughput, {default['name']} (the default) | "
        f"**{default['median']:.0f} images/s** (median of {len(default['rates'])} rounds) "
        "| measured | measured |"
    )
    return lines


def page_rate(run: dict[str, Any]) -> float:
    return float((run["pages"] - 1) / run["page_span"])


def page_ratio(reactor: dict[str, Any]) -> float:
    return page_rate(reactor["loaded"]) / page_rate(reactor["alone"])


def calibration_section(results: dict[str, Any]) -> list[str]:
    calibration = results["calibration"]
    thresholds = list(next(iter(calibration.values()))["thresholds"])
    head = " | ".join(f"at {t}: answered / right" for t in thresholds)
    lines = [
        f"| style | captchas | read right, no gate | {head} | lowest threshold for 95 % |",
        "|---|---:|---:|" + "---:|" * len(thresholds) + "---:|",
    ]
    for style, figures in calibration.items():
        cells = " | ".join(
            f"{pct(v['answered'])} / {'-' if v['right'] != v['right'] else pct(v['right'])}"
            for v in figures["thresholds"].values()
        )
        lowest = "none" if figures["lowest_95"] is None else f"{figures['lowest_95']:.2f}"
        lines.append(
            f"| {style} | {figures['captchas']} | {pct(figures['read_right'])} | {cells} | "
            f"{lowest} |"
        )
    return lines


def logins_section(results: dict[str, Any]) -> list[str]:
    lines = [
        "| style | mode | logins | succeeded | paid createTask | paid per login | "
        "after the first logins | local answers | declined | refused per login | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for style, modes in results["logins"].items():
        runs = [("local first", f) for f in modes["local_first_runs"]]
        for mode, f in [*runs, ("cloud only", modes["cloud_only"])]:
            lines.append(
                f"| {style} | {mode} | {f['logins']} | {f['succeeded']} | "
                f"{f['paid']} | {f['paid_per_login']:.2f} | {f['paid_per_login_steady']:.2f} | "
                f"{f['local_solved']} | {f['local_declined']} | {f['refused_per_login']:.3f} | "
                f"{f['seconds']:.1f} |"
            )
    return lines


def spread_section(results: dict[str, Any]) -> list[str]:
    lines = [
        "| style | local-first runs | paid per login: min / median / max | "
        "after the first logins | refused per login |",
        "|---|---:|---|---|---|",
    ]
    for style, modes in results["logins"].items():
        cells = []
        for key in ("paid_per_login", "paid_per_login_steady", "refused_per_login"):
            v = modes["spread"][key]
            digits = 3 if key == "refused_per_login" else 2
            cells.append(" / ".join(f"{v[at]:.{digits}f}" for at in ("min", "median", "max")))
        lines.append(f"| {style} | {len(modes['local_first_runs'])} | " + " | ".join(cells) + " |")
    return lines


def reactor_section(results: dict[str, Any]) -> list[str]:
    reactor = results["reactor"]
    alone, loaded = reactor["alone"], reactor["loaded"]
    return [
        "| crawl | pages | page span (best) | pages/s | every run's span |",
        "|---|---:|---:|---:|---|",
        f"| pages alone | {alone['pages']} | {alone['page_span']:.2f} s | "
        f"{page_rate(alone):.0f} | {', '.join(f'{s:.2f}' for s in alone['all_page_span'])} |",
        f"| pages while {reactor['local_solves']} captchas are read locally | "
        f"{loaded['pages']} | {loaded['page_span']:.2f} s | {page_rate(loaded):.0f} | "
        f"{', '.join(f'{s:.2f}' for s in loaded['all_page_span'])} |",
        "",
        f"Solves that ended before the last page: {loaded.get('solved_before_last_page', '?')} "
        f"of {loaded['solved']} (fewer than all: the pages crawled entirely while the engine "
        f"was reading); the reading took {loaded.get('solve_span', 0):.2f} s.",
    ]


def throughput_section(results: dict[str, Any]) -> list[str]:
    measured = results["throughput"]
    lines = table(measured)
    steps = measured["profile_ms"]
    lines += [
        "",
        "Where one image's time goes (one thread, median of 300 images): decoding and scaling "
        f"it (Pillow) {steps['decode_and_scale']:.2f} ms, the first model (onnxruntime, and "
        f"the softmax) {steps['first_model']:.2f} ms, the gate {steps['softmax_and_gate']:.2f} "
        f"ms; {pct(steps['second_opinion_share'])} of the images are read again by the second "
        f"model, {steps['second_model']:.2f} ms each.",
    ]
    return lines


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    facts = results["facts"]
    plan = results["plan"]
    template = (Path(__file__).parent / "local_first_page.md").read_text()
    page = template.format(
        command=results["command"],
        date=facts["date"],
        minutes=facts["total_seconds"] / 60,
        threshold=results["threshold"],
        noisy_lowest=results["calibration"]["noisy"]["lowest_95"],
        machine="\n".join(machine(facts)),
        summary="\n".join(summary(results)),
        calibration="\n".join(calibration_section(results)),
        calibration_count=plan["calibration"],
        logins="\n".join(logins_section(results)),
        spread="\n".join(spread_section(results)),
        runs=plan["runs"],
        login_count=plan["logins"],
        cloud_count=plan["cloud_logins"],
        at_once=plan["at_once"],
        warm_up=plan["warm_up"],
        reactor="\n".join(reactor_section(results)),
        reactor_pages=results["reactor"]["pages"],
        throughput="\n".join(throughput_section(results)),
        throughput_images=plan["throughput_images"],
    )
    out.write_text(page)
    raw = out.with_suffix(".json")
    raw.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return [out, raw]
