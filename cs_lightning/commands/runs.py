"""``cs-runs``: compare the runs under ``logs/`` (made by ``cs-train fit``): backbone, domain, what differs in their
configs, best and last values of the key metrics and wall time; ``--json`` for scripts, ``--metric M --plot out.png``
to draw one metric over steps."""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text
from tensorboard.backend.event_processing import event_accumulator

from cs_lightning.commands import fail, run_command
from cs_lightning.errors import CSLightningError
from cs_lightning.io import atomic_path

PROG = "cs-runs"
KEY_METRICS = ("val/acc", "val/f1_macro", "val/loss", "val/bleu", "val/rougeL", "test/acc", "test/f1_macro")
LOWER_IS_BETTER = ("loss", "ppl")
# config keys that differ between runs without saying anything about them (a key and everything below it)
NOISY_KEYS = ("trainer.logger", "checkpoint.dirpath", "predict_output", "config", "experiment")
VERSION_DIR = re.compile(r"version_(\d+)")
EVENTS_GLOB = "events.out.tfevents.*"
MATPLOTLIB_MISSING = "--plot needs matplotlib (pip install 'cs-lightning[plot]' or pip install matplotlib)"


@dataclass
class Run:
    """One ``logs/<experiment>/version_N`` folder, read.

    Attributes:
        experiment: the experiment folder's name.
        version: N of ``version_N``.
        config: the run's ``config.yaml`` flattened to dotted keys (empty when it has none).
        scalars: every logged scalar, by tag, as TensorBoard ``ScalarEvent`` (``wall_time``, ``step``, ``value``).
    """

    experiment: str
    version: int
    config: dict[str, Any]
    scalars: dict[str, list]

    @property
    def name(self) -> str:
        """``experiment/version_N``."""
        return f"{self.experiment}/version_{self.version}"


# ---------------------------------------------------------------------------------------------------- reading
def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def find_run_dirs(log_dir: Path, pattern: str | None = None) -> list[tuple[str, int, Path]]:
    """The run folders under ``log_dir``: every ``<experiment>/version_N`` that holds TensorBoard event files.

    Args:
        log_dir: the logs folder.
        pattern: when given, keep only the runs whose name (``experiment/version_N``) matches this fnmatch pattern.

    Returns:
        ``(experiment, N, folder)`` tuples, sorted by experiment, then by N.
    """
    found = []
    for folder in log_dir.glob("*/version_*"):
        match = VERSION_DIR.fullmatch(folder.name)
        if not (match and folder.is_dir() and any(folder.glob(EVENTS_GLOB))):
            continue
        experiment, version = folder.parent.name, int(match.group(1))
        if pattern is None or fnmatch.fnmatch(f"{experiment}/version_{version}", pattern):
            found.append((experiment, version, folder))
    return sorted(found, key=lambda item: item[:2])


def read_scalars(folder: Path) -> dict[str, list]:
    """Every scalar in the TensorBoard event files of ``folder``, by tag, in logging order.

    Raises:
        ValueError: when not a single event can be read from the files.
    """
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    accumulator.FirstEventTimestamp()  # raises ValueError when the files hold no readable event at all
    return {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()[event_accumulator.SCALARS]}


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; lists and empty dicts are values, not flattened."""
    flat = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def read_config(folder: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` flattened to dotted keys; empty, with a warning, when it is missing or unreadable."""
    path = folder / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        _warn(f"{path}: cannot read the run's config ({err.__class__.__name__}); its settings are not compared")
        return {}
    if not isinstance(config, dict):
        _warn(f"{path}: not a mapping of settings; its settings are not compared")
        return {}
    return flatten(config)


def load_runs(log_dir: str | Path, pattern: str | None = None) -> list[Run]:
    """Read the runs under ``log_dir``; a run whose event files cannot be read is skipped with a warning.

    Args:
        log_dir: the logs folder (``logs/<experiment>/version_N/``).
        pattern: fnmatch pattern on the run name (``experiment/version_N``); ``None`` keeps all runs.

    Raises:
        CSLightningError: when the folder is missing or holds no (matching, readable) run.
    """
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise CSLightningError(f"{log_dir}: no such folder (train a run with `cs-train fit` or pass the logs folder)")
    run_dirs = find_run_dirs(log_dir, pattern)
    if not run_dirs:
        what = "no run" if pattern is None else f"no run matching {pattern!r}"
        raise CSLightningError(f"{log_dir}: {what} (expected <experiment>/version_N folders with TensorBoard events)")
    runs = []
    for experiment, version, folder in run_dirs:
        try:
            scalars = read_scalars(folder)
        except Exception as err:  # noqa: BLE001 - any reader failure (corrupt file, I/O, permissions) skips the run
            _warn(f"{folder}: skipped, its event files cannot be read ({err})")
            continue
        runs.append(Run(experiment, version, read_config(folder), scalars))
    if not runs:
        raise CSLightningError(f"{log_dir}: no run with readable event files")
    return runs


# ---------------------------------------------------------------------------------------------------- comparing
def _is_noisy(key: str) -> bool:
    return any(key == noisy or key.startswith(f"{noisy}.") for noisy in NOISY_KEYS)


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys whose value is not the same in all ``configs`` (a missing key counts as ``None``), noisy
    keys (:data:`NOISY_KEYS`) left out. Empty configs (runs without a readable ``config.yaml``) are not compared."""
    configs = [config for config in configs if config]
    keys = sorted({key for config in configs for key in config if not _is_noisy(key)})
    return [key for key in keys if any(config.get(key) != configs[0].get(key) for config in configs[1:])]


def short_names(keys: list[str]) -> dict[str, str]:
    """A short, still unambiguous name for each dotted key: ``init_args`` parts dropped, then the shortest ending
    that no other key shares (``model.init_args.learning_rate`` -> ``learning_rate``; ``model.init_args.seed`` and
    ``data.init_args.seed`` -> ``model.seed`` and ``data.seed``)."""
    parts = {key: [part for part in key.split(".") if part != "init_args"] for key in keys}

    def shared(key: str, n: int) -> bool:
        return any(other != key and parts[other][-n:] == parts[key][-n:] for other in keys)

    names = {}
    for key in keys:
        n = next((n for n in range(1, len(parts[key]) + 1) if not shared(key, n)), None)
        names[key] = key if n is None else ".".join(parts[key][-n:])
    return names


def _lower_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN or infinity


def metric_summary(metric: str, events: list) -> dict[str, float | None]:
    """Best and last value of one metric: best is the min for loss and perplexity, the max otherwise (NaN ignored).

    Args:
        metric: the scalar's tag, e.g. ``val/acc``.
        events: its ``ScalarEvent`` list, in logging order.
    """
    values = [event.value for event in events if not math.isnan(event.value)]
    best = (min if _lower_is_better(metric) else max)(values) if values else math.nan
    return {"best": _finite_or_none(best), "last": _finite_or_none(events[-1].value)}


def wall_time(scalars: dict[str, list]) -> float | None:
    """Seconds between the first and the last logged scalar event; ``None`` when nothing was logged."""
    times = [event.wall_time for events in scalars.values() for event in events]
    return round(max(times) - min(times), 3) if times else None


def _domain(data_class_path: str | None) -> str | None:
    if not data_class_path:
        return None
    name = str(data_class_path).rsplit(".", 1)[-1]
    return name.removesuffix("DataModule").lower() or None


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """One JSON-ready record per run: ``run``, ``experiment``, ``version``, ``backbone``, ``domain``,
    ``config_diff`` (the run's value of each key that differs between ``runs``), ``metrics``
    (``{name: {"best", "last"}}`` for the key metrics the run logged) and ``wall_time_s``."""
    diff_keys = differing_keys([run.config for run in runs])
    return [{
        "run": run.name,
        "experiment": run.experiment,
        "version": run.version,
        "backbone": run.config.get("model.init_args.backbone"),
        "domain": _domain(run.config.get("data.class_path")),
        "config_diff": {key: run.config.get(key) for key in diff_keys} if run.config else {},
        "metrics": {name: metric_summary(name, run.scalars[name]) for name in KEY_METRICS if run.scalars.get(name)},
        "wall_time_s": wall_time(run.scalars),
    } for run in runs]


# ---------------------------------------------------------------------------------------------------- showing
def _format_value(value: Any) -> str:
    """A config value, compact: ``Class(arg=value, ...)`` for a class_path/init_args mapping, YAML-like scalars."""
    if isinstance(value, dict) and "class_path" in value:
        args = ", ".join(f"{k}={_format_value(v)}" for k, v in (value.get("init_args") or {}).items())
        return f"{str(value['class_path']).rsplit('.', 1)[-1]}({args})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(item) for item in value) + "]"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def _format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def render_table(records: list[dict[str, Any]]) -> Table:
    """The records of :func:`summarize` as a rich table; metric cells read ``best / last``."""
    diff_keys = sorted({key for record in records for key in record["config_diff"]})
    names = short_names(diff_keys)
    metrics = [name for name in KEY_METRICS if any(name in record["metrics"] for record in records)]
    table = Table(title=f"{len(records)} run(s)",
                  caption="metrics: best / last (best is the max, the min for loss); config: what differs")
    table.add_column("run", no_wrap=True)
    for column in ("backbone", "domain", "config diff", *metrics, "wall time"):
        table.add_column(column)
    for record in records:
        diff = "\n".join(f"{names[key]}={_format_value(value)}" for key, value in record["config_diff"].items())
        scores = [record["metrics"].get(name) for name in metrics]
        cells = [record["run"], record["backbone"] or "-", record["domain"] or "-", diff or "-",
                 *("-" if s is None else f"{_format_number(s['best'])} / {_format_number(s['last'])}" for s in scores),
                 _format_duration(record["wall_time_s"])]
        table.add_row(*(Text(cell) for cell in cells))  # Text: values such as "[...]" are not rich markup
    return table


def _print_table(table: Table) -> None:
    console = Console()
    if not console.is_terminal:  # a pipe or a file has no width to fit: print the table unwrapped
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        console.width = max(console.width, natural)
    console.print(table)


def _figure_class():
    """matplotlib's ``Figure``, or ``None`` when matplotlib is not installed (it is not a dependency)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def plot_metric(runs: list[Run], metric: str, out: str | Path, figure_class) -> Path:
    """Draw ``metric`` over steps, one line per run that logged it, and write the figure atomically to ``out``.

    Args:
        runs: the runs to draw.
        metric: a scalar tag, e.g. ``val/acc``.
        out: the image file; its extension picks the format (png when it has none).
        figure_class: matplotlib's ``Figure`` (see :func:`_figure_class`).

    Raises:
        CSLightningError: when no run logged ``metric`` or the format is not one matplotlib writes.
    """

    drawn = [run for run in runs if run.scalars.get(metric)]
    if not drawn:
        logged = sorted({tag for run in runs for tag in run.scalars})
        shown = ", ".join(logged[:12]) + (f", ... ({len(logged) - 12} more)" if len(logged) > 12 else "")
        raise CSLightningError(f"--metric {metric}: no chosen run logged it (logged: {shown or 'nothing'})")
    figure = figure_class(figsize=(8, 5))
    fmt = Path(out).suffix.lstrip(".").lower() or "png"
    if fmt not in figure.canvas.get_supported_filetypes():
        raise CSLightningError(f"--plot {out}: matplotlib cannot write .{fmt} files (use .png, .svg or .pdf)")
    axes = figure.add_subplot()
    for run in drawn:
        events = run.scalars[metric]
        axes.plot([e.step for e in events], [e.value for e in events], marker=".", label=run.name)
    axes.set(xlabel="step", ylabel=metric, title=metric)
    axes.grid(alpha=0.3)
    axes.legend()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format=fmt, bbox_inches="tight")
    return Path(out)


# ---------------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    """Run ``cs-runs``.

    Args:
        argv: the arguments, without the program name; ``None`` reads ``sys.argv``.

    Exits 1 on a problem with the logs (one line, no traceback) and 2 on a usage error.
    """
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("log_dir", nargs="?", default="logs", help="the logs folder (default: logs)")
    parser.add_argument("--runs", metavar="PATTERN", help="only the runs whose name (experiment/version_N) matches "
                                                          "this fnmatch pattern, e.g. 'bert_*'")
    parser.add_argument("--json", action="store_true", help="print JSON (a list of runs) instead of a table")
    parser.add_argument("--metric", metavar="NAME", help="the scalar to --plot, e.g. val/acc")
    parser.add_argument("--plot", metavar="FILE", help="draw --metric over steps for the chosen runs into FILE (.png)")
    args = parser.parse_args(argv)
    if bool(args.metric) != bool(args.plot):
        parser.error("--metric and --plot go together")
    figure_class = _figure_class() if args.plot else None
    if args.plot and figure_class is None:
        fail(PROG, MATPLOTLIB_MISSING, 2)
    runs = []

    def read() -> None:
        runs.extend(load_runs(args.log_dir, args.runs))
        if args.plot:
            print(f"{PROG}: wrote {plot_metric(runs, args.metric, args.plot, figure_class)}", file=sys.stderr)

    run_command(PROG, read, code=1, also=(OSError,))
    records = summarize(runs)
    if args.json:
        print(json.dumps(records, indent=2, default=str))
    else:
        _print_table(render_table(records))


if __name__ == "__main__":
    main()
