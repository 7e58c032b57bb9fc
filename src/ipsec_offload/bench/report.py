"""The benchmark's results as a table (plain text or Markdown) and as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ipsec_offload.bench.run import Figure, Ratio, Results
from ipsec_offload.sim.outputs import write_text

_COLUMNS = ("figure", "size", "algorithm", "absolute", "Gbit/s", "ratio", "to", "target")


def to_json(results: Results) -> dict[str, Any]:
    """The results as plain data: machine, settings, every figure with its ratios."""
    settings = asdict(results.settings)
    settings["algorithms"] = [a.name for a in results.settings.algorithms]
    return {
        "machine": results.machine,
        "settings": settings,
        "seconds": round(results.seconds, 1),
        "figures": [_figure_json(f) for f in results.figures],
        "notes": list(results.notes),
    }


def _figure_json(figure: Figure) -> dict[str, Any]:
    return {
        "id": figure.id,
        "what": figure.what,
        "value": figure.value,
        "unit": figure.unit,
        "size": figure.size,
        "algorithm": None if figure.algorithm is None else figure.algorithm.name,
        "gbps": figure.gbps,
        "baseline": not figure.ratios,
        "ratios": [
            {
                "baseline": r.baseline,
                "value": r.value,
                "target": None if r.target is None else str(r.target),
                "met": r.met,
            }
            for r in figure.ratios
        ],
    }


def write_json(results: Results, path: Path) -> None:
    """The figures as JSON, written whole or not at all (a UsageError names the file)."""
    write_text(path, json.dumps(to_json(results), indent=2) + "\n", "bench JSON")


def table(results: Results, markdown: bool = False) -> str:
    """Every figure, one line each, and one more line for each further ratio."""
    rows = [row for figure in results.figures for row in _rows(results, figure)]
    if markdown:
        lines = [_markdown_row(_COLUMNS), _markdown_row(["---"] * len(_COLUMNS))]
        return "\n".join(lines + [_markdown_row(row) for row in rows])
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [_COLUMNS, *rows]
    )


def targets(results: Results) -> list[tuple[Figure, Ratio]]:
    """Every ratio that has a target, with its figure."""
    return [(f, r) for f in results.figures for r in f.ratios if r.target is not None]


def _rows(results: Results, figure: Figure) -> list[tuple[str, ...]]:
    gbps = figure.gbps
    first = (
        figure.what,
        "" if figure.size is None else str(figure.size),
        "" if figure.algorithm is None else f"AES-GCM-{figure.algorithm.key_length * 8}",
        f"{_number(figure.value)} {figure.unit}",
        "" if gbps is None else f"{gbps:.2f}",
    )
    if not figure.ratios:
        return [(*first, "", "(baseline)", "")]
    blank = ("",) * len(first)
    return [
        (*(first if i == 0 else blank), *_ratio_cells(results, ratio))
        for i, ratio in enumerate(figure.ratios)
    ]


def _ratio_cells(results: Results, ratio: Ratio) -> tuple[str, str, str]:
    baseline = results.figure(ratio.baseline).what
    if ratio.target is None:
        return _ratio(ratio.value), baseline, ""
    verdict = "met" if ratio.met else "MISSED"
    return _ratio(ratio.value), baseline, f"{ratio.target} {verdict}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.3f}"


def _markdown_row(cells: tuple[str, ...] | list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
