"""``cs-backbones``: the installed backbone plugins, with the package that provides each and the tasks it supports
(for a generic plugin such as ``generic``, the tasks of each model type it covers). A plugin that fails to load is
listed with its error instead of breaking the listing. ``model.backbone: auto`` takes the plugin whose model types
hold the weights' (or ``model.model_type``), else the generic family."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from cs_lightning.errors import CSLightningError
from cs_lightning.registry import AUTO, get_backbone, installed_backbones


def describe() -> list[dict]:
    rows = []
    for info in installed_backbones():
        row = {"name": info.name, "package": info.package, "version": info.version, "target": info.target}
        try:
            backbone = get_backbone(info.name)
            row.update(tasks=list(backbone.supported_tasks), model_types=list(backbone.model_types), error=None)
            if backbone.generic:  # one instance per model type, each with its own tasks
                row["covers"] = {t: list(get_backbone(info.name, model_type=t).supported_tasks)
                                 for t in backbone.model_types}
        except CSLightningError as err:
            row.update(tasks=[], model_types=[], error=str(err))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cs-backbones", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON (one list) instead of a table")
    args = parser.parse_args(argv)
    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="cs-lightning backbone plugins (entry-point group cs_lightning.backbones)")
    for column in ("name", "package", "version", "tasks", "model types", "status"):
        table.add_column(column)
    for row in rows:
        status = "[green]ok[/green]" if row["error"] is None else f"[red]{row['error']}[/red]"
        tasks = ", ".join(row["tasks"])
        if row.get("covers"):  # reply is for some model types only: name them
            replies = [t for t, covered in row["covers"].items() if "reply" in covered]
            tasks = f"intent (all), reply ({', '.join(replies)})" if replies else tasks
        table.add_row(row["name"], row["package"], row["version"], tasks, ", ".join(row["model_types"]), status)
    Console().print(table)
    Console().print(f"model.backbone: {AUTO} takes the plugin listing the weights' model type (or model.model_type), "
                    "else the generic family.")


if __name__ == "__main__":
    main()
