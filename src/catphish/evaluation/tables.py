"""Tables as rows of plain values, written as one CSV and one JSON each.

A table is what the report shows and what a user opens in a spreadsheet: every row a flat mapping of column name to a
string, number or ``None`` (a value that does not apply or cannot be computed, e.g. an AUC without both classes).
Every table carries a description and notes that say what its numbers mean.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catphish.artifacts import atomic_write_text, write_json

Value = str | int | float | None


@dataclass
class Table:
    name: str
    description: str
    rows: list[dict[str, Value]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        columns: list[str] = []
        for row in self.rows:
            columns.extend(key for key in row if key not in columns)
        return columns

    def to_json(self) -> dict[str, Any]:
        return {"table": self.name, "description": self.description, "notes": json_safe(self.notes),
                "columns": self.columns, "rows": json_safe(self.rows)}

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        columns = self.columns
        writer.writerow(columns)
        for row in self.rows:
            writer.writerow([csv_cell(row.get(column)) for column in columns])
        return buffer.getvalue()


def write_tables(out_dir: str | Path, tables: list[Table]) -> list[Path]:
    """``<name>.csv`` and ``<name>.json`` per table (atomic writes)."""
    out_dir = Path(out_dir)
    written = []
    for table in tables:
        written.append(atomic_write_text(out_dir / f"{table.name}.csv", table.to_csv()))
        written.append(write_json(out_dir / f"{table.name}.json", table.to_json()))
    return written


def csv_cell(value: Any) -> str:
    """Numbers with 6 significant digits; ``None`` and NaN as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def json_safe(value: Any) -> Any:
    """NaN and infinities become ``null`` (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    return value
