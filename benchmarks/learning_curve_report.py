"""The learning curve's results as a plot, tables, the targets checked, and the
"Site-learnt reader" section of docs/benchmarks.md. Works on the saved JSON only: no
engine, no training."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MODES = ("cloud", "local", "learn")
MODE_TITLES = {
    "cloud": "cloud only",
    "local": "local-first, no learning",
    "learn": "local-first with learning",
}
#: The targets' window: the logins after this many accepted answers.
TARGET_LABELS = 3000
TARGET_WINDOW = 500
#: The claptcha style's targets: paid calls and refused local answers per login.
TARGET_PAID = 0.45
TARGET_REFUSED = 0.03
SECTION_START = "<!-- learning-curve: written by benchmarks/learning_curve.py --report -->"
SECTION_END = "<!-- learning-curve: end -->"


def window_rates(windows: list[dict[str, Any]], first: int, count: int) -> dict[str, Any] | None:
    """Paid calls and refused local answers per successful login over the whole windows
    that start in logins ``first`` .. ``first + count`` (0-based), or None when the run
    has fewer logins there."""
    chosen = [w for w in windows if first <= w["first_login"] < first + count]
    logins = sum(w["logins"] for w in chosen)
    if logins < count:
        return None

    def share(key: str) -> float | None:
        # None when a window does not know it (a run rebuilt from its log).
        counts = [w[key] for w in chosen]
        return None if None in counts else sum(counts) / logins

    return {
        "first": first,
        "logins": logins,
        "paid_per_login": sum(w["paid"] for w in chosen) / logins,
        "refused_local_per_login": sum(w["refused_local"] for w in chosen) / logins,
        "learnt_share": share("answered_learnt"),
        "ddddocr_share": share("answered_ddddocr"),
    }


def after_target(data: dict[str, Any]) -> dict[str, dict[str, Any] | None] | None:
    """Each mode's rates over the TARGET_WINDOW logins after the learning run's labels
    reached TARGET_LABELS (the same logins for every mode), or None when it never did."""
    learn = data["runs"].get("learn")
    if learn is None or learn.get("target_login") is None:
        return None
    # Windows are whole: the window after the one in which the labels reached the target.
    window = data["settings"]["window"]
    first = (learn["target_login"] // window + 1) * window
    return {
        mode: window_rates(run["windows"], first, TARGET_WINDOW)
        for mode, run in data["runs"].items()
    }


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.lines
    import matplotlib.pyplot as plt

    styles = list(results["styles"])
    figure, axes = plt.subplots(
        2,
        len(styles),
        figsize=(4.6 * len(styles), 7.0),
        sharex=True,
        sharey="row",
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.4]},
    )
    colours = {"cloud": "#7f7f7f", "local": "#d62728", "learn": "#1f77b4"}
    widths = {"cloud": 1.5, "local": 3.0, "learn": 1.5}
    for column, style in enumerate(styles):
        data = results["styles"][style]
        paid_axis, refused_axis = axes[0][column], axes[1][column]
        for mode in MODES:
            run = data["runs"].get(mode)
            if run is None:
                continue
            windows = run["windows"]
            # Each window's value held from its first login to its last: a step per window.
            edges = [w["first_login"] for w in windows] + [
                windows[-1]["first_login"] + windows[-1]["logins"]
            ]
            paid = [w["paid"] / w["logins"] for w in windows]
            refused = [w["refused_local"] / w["logins"] for w in windows]
            # The learning run is the local run until its first model: draw it thinner, on top.
            width = widths[mode]
            paid_axis.stairs(
                paid,
                edges,
                color=colours[mode],
                linewidth=width,
                label=MODE_TITLES[mode],
                baseline=None,
            )
            if mode != "cloud":
                refused_axis.stairs(
                    refused, edges, color=colours[mode], linewidth=width, baseline=None
                )
            for training in run.get("trainings", []):
                paid_axis.axvline(
                    training["at_login"],
                    color=colours[mode],
                    linestyle=":" if training["promoted"] else "--",
                    alpha=0.6,
                )
        if style == "claptcha":  # the style the targets are set on
            paid_axis.axhline(TARGET_PAID, color="#2ca02c", linestyle="-.", linewidth=1)
            refused_axis.axhline(TARGET_REFUSED, color="#2ca02c", linestyle="-.", linewidth=1)
        paid_axis.set_title(f"{style} ({data['library']})")
        paid_axis.set_xlim(left=0)
        refused_axis.set_xlabel("logins")
        if column == 0:
            paid_axis.set_ylabel("paid createTask calls / successful login")
            refused_axis.set_ylabel("refused local\nanswers / login")
    # One scale per row (shared): the highest value of any style, with the targets in view.
    highest = [TARGET_PAID, TARGET_REFUSED]
    for data in results["styles"].values():
        for mode, run in data["runs"].items():
            for w in run["windows"]:
                highest[0] = max(highest[0], w["paid"] / w["logins"])
                if mode != "cloud":
                    highest[1] = max(highest[1], w["refused_local"] / w["logins"])
    axes[0][0].set_ylim(0, highest[0] * 1.08)
    axes[1][0].set_ylim(0, highest[1] * 1.15)
    handles = [
        matplotlib.lines.Line2D([], [], color=colours[mode], linewidth=widths[mode])
        for mode in MODES
    ]
    handles.append(matplotlib.lines.Line2D([], [], color="#2ca02c", linestyle="-."))
    figure.legend(
        handles,
        [MODE_TITLES[mode] for mode in MODES] + ["the targets (claptcha)"],
        loc="lower center",
        ncol=4,
        fontsize="small",
    )
    settings = next(iter(results["styles"].values()))["settings"]
    figure.suptitle(
        f"Per {settings['window']} logins; the cloud right {settings['cloud_accuracy']:.0%} of "
        f"the time; trained every {settings['retrain_every']} accepted answers\n"
        "(vertical lines: trainings; dotted: the model was promoted, dashed: it was not)",
        fontsize="medium",
    )
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def baseline_table(rows: list[dict[str, Any]]) -> list[str]:
    threshold = rows[0]["threshold"]
    lines = [
        "| style (library) | captchas | ddddocr right, no gate | answered by the gate at "
        f"{threshold:g} | right among those |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['style']} ({row['library']}) | {row['captchas']:,} | "
            f"{row['accuracy']:.1%} | {row['coverage']:.1%} | {_percent(row['precision'])} |"
        )
    return lines


def measured(run: dict[str, Any]) -> int:
    return sum(w["logins"] for w in run["windows"])


def comparison(data: dict[str, Any]) -> tuple[int, int, str] | None:
    """The logins the modes are compared over: the TARGET_WINDOW after the learning run
    reached TARGET_LABELS; else, for a run stopped before, its last TARGET_WINDOW logins.
    (first login, count, how to say it), or None without a learning run."""
    learn = data["runs"].get("learn")
    if learn is None or not learn["windows"]:
        return None
    rates = after_target(data)
    if rates is not None and rates.get("learn") is not None:
        first = rates["learn"]["first"]
        return first, TARGET_WINDOW, f"{first + 1:,}-{first + TARGET_WINDOW:,}, after 3,000 labels"
    end = measured(learn)
    count = min(TARGET_WINDOW, end)
    return end - count, count, f"{end - count + 1:,}-{end:,}, the last the learning run measured"


def results_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| style | logins measured: cloud only / no learning / learning | compared over logins "
        "| paid/login: cloud only / no learning / learning | refused local answers/login: no "
        "learning / learning | answered by the learnt model / by ddddocr | the model trained "
        f"on {TARGET_LABELS:,} labels (else the last): held-out accuracy, threshold, coverage "
        "(precision) | model size |",
        "|---|---|---|---|---|---|---|---:|",
    ]
    for style, data in results["styles"].items():
        runs = data["runs"]
        logins = " / ".join(f"{measured(runs[mode]):,}" if mode in runs else "-" for mode in MODES)
        compared = comparison(data)
        rates: dict[str, dict[str, Any] | None] = {}
        over = "-"
        if compared is not None:
            first, count, over = compared
            rates = {mode: window_rates(run["windows"], first, count) for mode, run in runs.items()}
        paid = " / ".join(
            "-" if rates.get(mode) is None else f"{rates[mode]['paid_per_login']:.3f}"
            for mode in MODES
        )
        refused = " / ".join(
            "-" if rates.get(mode) is None else f"{rates[mode]['refused_local_per_login']:.3f}"
            for mode in ("local", "learn")
        )
        learnt = rates.get("learn")
        shares = (
            "-"
            if learnt is None
            else f"{_percent(learnt['learnt_share'])} / {_percent(learnt['ddddocr_share'])}"
        )
        trainings = runs.get("learn", {}).get("trainings", [])
        chosen = next((t for t in trainings if t["labels"] >= TARGET_LABELS), None)
        if chosen is None and trainings:
            chosen = trainings[-1]
        quality = "-"
        if chosen is not None:
            quality = (
                f"{chosen['labels']:,} labels: {chosen['heldout_accuracy']:.1%}, "
                f"{_threshold(chosen)}, "
                f"{chosen['coverage']:.1%} ({chosen['precision']:.1%})"
            )
        sizes = [t["model_bytes"] for t in trainings if t["model_bytes"]]
        size = f"{max(sizes) / 1e6:.2f} MB" if sizes else "-"
        lines.append(
            f"| {style} | {logins} | {over} | {paid} | {refused} | {shares} | {quality} | {size} |"
        )
    return lines


def trainings_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| style | after login | labels | training time | promoted | held-out accuracy | "
        "threshold | coverage at it | precision at it | model size |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for style, data in results["styles"].items():
        for t in data["runs"].get("learn", {}).get("trainings", []):
            threshold = _threshold(t)
            size = f"{t['model_bytes'] / 1e6:.2f} MB" if t["model_bytes"] else "-"
            lines.append(
                f"| {style} | {t['at_login']:,} | {t['labels']:,} | {t['seconds'] / 60:.1f} min "
                f"| {'yes' if t['promoted'] else 'no'} | {t['heldout_accuracy']:.1%} | "
                f"{threshold} | {t['coverage']:.1%} | {t['precision']:.1%} | {size} |"
            )
    return lines


def targets(results: dict[str, Any]) -> list[str]:
    """The targets, checked on the results: one line each. Over the logins of
    :func:`comparison`: after 3,000 labels, else the last a stopped run measured (said)."""
    lines = []
    for style, data in results["styles"].items():
        compared = comparison(data)
        if compared is None:
            lines.append(f"- {style}: no learning run.")
            continue
        first, count, over = compared
        runs = data["runs"]
        learnt = window_rates(runs["learn"]["windows"], first, count)
        local = window_rates(runs["local"]["windows"], first, count) if "local" in runs else None
        assert learnt is not None
        line = (
            f"- {style}: logins {over}: **{learnt['paid_per_login']:.3f}** paid calls per "
            "successful login with learning"
        )
        if local is not None:
            line += f" ({local['paid_per_login']:.3f} without)"
        line += f", **{learnt['refused_local_per_login']:.3f}** refused local answers per login"
        promoted = any(t["promoted"] for t in runs["learn"]["trainings"])
        reached = after_target(data) is not None and count == TARGET_WINDOW
        if style == "claptcha" and reached:
            met = (
                learnt["paid_per_login"] <= TARGET_PAID
                and learnt["refused_local_per_login"] <= TARGET_REFUSED
            )
            line += (
                f". Target <= {TARGET_PAID} and <= {TARGET_REFUSED}: "
                f"**{'met' if met else 'not met'}**."
            )
        elif style == "claptcha":
            line += f". Target: not measured (the run stopped before {TARGET_LABELS:,} labels)."
        elif local is not None:
            no_worse = learnt["paid_per_login"] <= local["paid_per_login"]
            verdict = "a model was promoted" if promoted else "no model was promoted"
            line += (
                f"; {verdict}; paid per login no worse than without learning: "
                f"**{'met' if no_worse else 'not met'}**"
                + ("." if reached else f" (before {TARGET_LABELS:,} labels).")
            )
        lines.append(line)
    return lines


def _threshold(training: dict[str, Any]) -> str:
    """A training's threshold: '?' when not known (a run rebuilt from its log)."""
    if "threshold" not in training:
        return "?"
    return "none" if training["threshold"] is None else f"{training['threshold']:.3f}"


def section(results: dict[str, Any], command: str, png: str) -> str:
    """The markdown of the "Site-learnt reader" section, between its markers."""
    settings = next(iter(results["styles"].values()))["settings"]
    logins = sum(
        w["logins"]
        for data in results["styles"].values()
        for run in data["runs"].values()
        for w in run["windows"]
    )
    parts = [
        SECTION_START,
        "## Site-learnt reader: the learning curve",
        "",
        "How many captchas a site-learnt reader takes off the bill as it learns a "
        "site's captcha style from the answers the site accepts. **A simulation with the real "
        "engines and the real trainer, not a crawl**: the captchas are drawn by captcha "
        "libraries from PyPI (seeded), ddddocr reads them through the plugin's `OcrEngine` "
        "behind its gate (`passes` at `CAPSOLVER_LOCAL_MIN_CONFIDENCE`'s default), "
        "`train_model` trains on the accepted answers and `LearntModel` reads at the "
        "threshold the trainer chose; the site (it accepts an answer equal to the captcha's "
        "text ignoring case, and shows a fresh captcha after a refusal) and the cloud (right "
        f"{settings['cloud_accuracy']:.0%} of the time, a CapSolver-like rate on such images; "
        "the same captcha gets the same verdict in every mode) are modelled. A crawl of the "
        f"{logins:,} logins would measure nothing "
        "more but hours of HTTP round trips (the crawl's own path of learning, labels, "
        "training in a child process and reloading, is not what this measures).",
        "",
        "Each login gets a fresh captcha until one answer is accepted. Modes: **cloud only** "
        "(every captcha a paid createTask); **local-first without learning** (ddddocr "
        "answers when the gate passes, else paid); **with learning** (the learnt model "
        "first at its threshold, then ddddocr behind the gate, then paid; every accepted "
        "answer becomes a label; training on all labels each time "
        f"{settings['retrain_every']:,} new ones arrived, with `previous=` the current "
        "model, which the trainer replaces only by a better one). A refused local answer "
        "costs a fresh captcha and is counted. The gate reads with the style's lengths and "
        "characters (what local-first has learnt after its first accepted answers).",
        "",
        f"Run: `{command}`, then `python benchmarks/learning_curve.py --report` (the plot "
        "`docs/learning-curve.png`, the numbers in `docs/learning-curve.json`, this "
        "section). Trainings ran with one BLAS thread, two styles side by side, on a 2-core "
        "machine other work shared at times: their times are upper bounds. Reproduce the "
        "captchas and the ddddocr column with `python benchmarks/learning_curve.py "
        "--baseline`; a five-minute smoke run of every stage: `--quick`.",
        "",
    ]
    if results.get("baseline"):
        parts += ["ddddocr alone (local-first without learning) on each style:", ""]
        parts += baseline_table(results["baseline"])
        parts.append("")
    parts += ["The learning curve, per style:", ""]
    parts += results_table(results)
    parts += ["", "Trainings (time on this machine, model size, held-out figures):", ""]
    parts += trainings_table(results)
    parts += ["", "The targets:", ""]
    parts += targets(results)
    parts += ["", f"![Paid calls per successful login against logins]({png})", "", SECTION_END]
    return "\n".join(parts)


def write_section(page: Path, text: str) -> None:
    """Put ``text`` in place of the section in ``page``, or at its end if it has none."""
    content = page.read_text()
    pattern = re.compile(re.escape(SECTION_START) + ".*?" + re.escape(SECTION_END), re.S)
    if pattern.search(content):
        content = pattern.sub(lambda _: text, content)
    else:
        content = content.rstrip("\n") + "\n\n" + text + "\n"
    page.write_text(content)
