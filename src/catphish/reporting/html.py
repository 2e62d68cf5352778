"""A tiny builder for one self-contained HTML page: sections, tables, explanations and embedded images."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.7rem;margin:.2em 0 .1em}
h2{font-size:1.3rem;margin-top:2em;border-bottom:2px solid #e3e6ea;padding-bottom:4px}
h3{font-size:1.05rem;margin-top:1.4em}
p.lead{color:#4a5561;margin-top:0} p.note{color:#4a5561;font-size:.92rem;margin:.4em 0 .8em}
nav{font-size:.9rem;margin:12px 0 8px} nav a{margin-right:14px;color:#1f5fbf;text-decoration:none}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.88rem;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:right;white-space:nowrap}
td.text{white-space:normal;text-align:left;min-width:14em;max-width:42em}
th{background:#eef1f5;text-align:center} td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafbfc}
img{max-width:100%;height:auto;border:1px solid #e3e6ea;margin:6px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:14px}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px;font-size:.88em}
.warn{background:#fff6e0;border-left:4px solid #e0a800;padding:6px 10px;font-size:.92rem}
footer{color:#6a7480;font-size:.8rem;margin-top:40px}
"""


@dataclass
class Section:
    title: str
    anchor: str
    parts: list[str] = field(default_factory=list)

    def text(self, content: str, css: str = "note") -> None:
        self.parts.append(f'<p class="{css}">{html.escape(content)}</p>')

    def heading(self, content: str) -> None:
        self.parts.append(f"<h3>{html.escape(content)}</h3>")

    def warning(self, content: str) -> None:
        self.parts.append(f'<p class="warn">{html.escape(content)}</p>')

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, caption: str = "") -> None:
        if not rows:
            return
        columns = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(_cell(format_value(row.get(c, ""))) for c in columns) + "</tr>"
                       for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, fig: Figure, alt: str) -> None:
        self.parts.append(image_tag(figure_png(fig), alt))

    def image(self, path: str | Path, alt: str) -> None:
        self.parts.append(image_tag(Path(path).read_bytes(), alt))

    def figures(self, figures: Sequence[tuple[Figure, str]]) -> None:
        self.parts.append('<div class="grid">' + "".join(image_tag(figure_png(f), a) for f, a in figures) + "</div>")


@dataclass
class Page:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        section = Section(title, anchor=f"s{len(self.sections) + 1}")
        self.sections.append(section)
        return section

    def render(self, footer: str = "") -> str:
        nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "".join(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{"".join(s.parts)}</section>'
                       for s in self.sections)
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body><main>"
                f"<h1>{html.escape(self.title)}</h1><p class=\"lead\">{html.escape(self.subtitle)}</p>"
                f"<nav>{nav}</nav>{body}<footer>{html.escape(footer)}</footer></main></body></html>\n")


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def image_tag(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if value is None:
        return "–"
    return str(value)


def _cell(text: str) -> str:
    """A table cell; prose (a long value with spaces) wraps and reads left-aligned instead of widening the table."""
    wraps = len(text) > 40 and " " in text
    return f'<td class="text">{html.escape(text)}</td>' if wraps else f"<td>{html.escape(text)}</td>"
