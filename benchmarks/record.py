"""Record benchmark figures: one JSON line in results.jsonl and one row in RESULTS.md per figure.

Every benchmark script calls `record(...)`; figures are never typed by hand. Device runs write
their own results file (same JSON shape) under $OUT; once it is back on this machine,
`python benchmarks/record.py --import FILE.jsonl` records each of its lines here.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_JSONL = HERE / "results.jsonl"
RESULTS_MD = HERE / "RESULTS.md"
FIELDS = ("metric", "value", "unit", "card", "date", "command", "note")
MD_HEADER = (
    "# Benchmark results\n\n"
    "Written by `benchmarks/record.py` (one row per figure; the same figures, one JSON object a\n"
    "line, are in `results.jsonl`). Never edit figures by hand: rerun the benchmark.\n\n"
    "| metric | value | unit | card | date | command | note |\n"
    "| --- | --- | --- | --- | --- | --- | --- |\n"
)


def _md_cell(value: object) -> str:
    # A pipe or newline inside a cell would break the table row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _append(entry: dict, jsonl: Path, md: Path) -> None:
    with jsonl.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    if not md.exists():
        md.write_text(MD_HEADER, encoding="utf-8")
    value = entry["value"]
    shown = f"{value:.6g}" if isinstance(value, float) else str(value)
    cells = [
        entry["metric"],
        shown,
        entry["unit"],
        entry["card"],
        entry["date"],
        f"`{entry['command']}`",
        entry["note"],
    ]
    with md.open("a", encoding="utf-8") as f:
        f.write("| " + " | ".join(_md_cell(c) for c in cells) + " |\n")


def record(
    metric: str,
    value: float,
    unit: str,
    card: str,
    command: str,
    note: str = "",
    *,
    date: str | None = None,
    jsonl: Path | None = None,
    md: Path | None = None,
) -> dict:
    """Append one figure to `jsonl` and `md`; `date` defaults to today's UTC ISO date. Returns the entry."""
    if not metric or not unit or not card or not command:
        raise ValueError(
            f"record: metric, unit, card and command must be non-empty (got metric={metric!r}, "
            f"unit={unit!r}, card={card!r}, command={command!r})"
        )
    entry = {
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "card": card,
        "date": date or datetime.now(UTC).date().isoformat(),
        "command": command,
        "note": note,
    }
    _append(entry, Path(jsonl or RESULTS_JSONL), Path(md or RESULTS_MD))
    return entry


class FigureLog:
    """The device scripts' figures: each one recorded, added to their closing table and printed.

    `rows` ([(name, value, verdict)]) is shared with the script's other rows of that table.
    """

    def __init__(
        self, card: str, command: str, jsonl: Path, md: Path, rows: list[tuple[str, str, str]]
    ) -> None:
        self.card, self.command, self.jsonl, self.md, self.rows = card, command, jsonl, md, rows

    def emit(
        self, metric: str, value: float, unit: str, note: str = "", verdict: str = "", suffix: str = ""
    ) -> None:
        record(metric, value, unit, self.card, self.command, note, jsonl=self.jsonl, md=self.md)
        self.rows.append((metric, f"{value:.4g} {unit}", verdict))
        print(f"  {metric} = {value:.4g} {unit} {verdict} {note}{suffix}", flush=True)


def import_results(path: Path, *, jsonl: Path | None = None, md: Path | None = None) -> list[dict]:
    """Record every line of a results file written elsewhere (e.g. by a device run under $OUT).

    Each line needs metric, value, unit, card and command; date and note are kept when present.
    The whole file is checked before anything is written, so a bad line records nothing.
    """
    entries = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        missing = [k for k in ("metric", "value", "unit", "card", "command") if k not in obj]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        entries.append(obj)
    return [
        record(
            o["metric"],
            o["value"],
            o["unit"],
            o["card"],
            o["command"],
            o.get("note", ""),
            date=o.get("date"),
            jsonl=jsonl,
            md=md,
        )
        for o in entries
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--import",
        dest="import_file",
        type=Path,
        required=True,
        metavar="FILE.jsonl",
        help="a results file (one JSON object a line) to record here",
    )
    args = parser.parse_args(argv)
    try:
        done = import_results(args.import_file)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for e in done:
        print(f"recorded {e['metric']} = {e['value']:.6g} {e['unit']} ({e['card']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
