"""A self-contained HTML report: headings, text, tables and figures, every image embedded as a
base64 PNG (``data:`` URIs), no script, no external file. Opens in any browser, offline."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from . import __version__
from .viz import png

STYLE = """
body { font-family: system-ui, sans-serif; max-width: min(96vw, 1800px); margin: 2em auto; padding: 0 1em; }
body { color: #222; } h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; } figure.wide img { width: 100%; }
figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; } th { background: #f3f3f3; }
.note { font-size: 0.85em; color: #555; } .error { color: #a00; }
"""


def png_uri(picture: Figure | np.ndarray | bytes) -> str:
    """A figure, an (H, W, 3) uint8 array or PNG bytes as a ``data:image/png;base64`` URI."""
    if isinstance(picture, Figure):
        data = png(picture)
    elif isinstance(picture, np.ndarray):
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = bytes(picture)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


class Report:
    """Build a page in order, then ``save(path)``; all text is HTML-escaped."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> Report:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str, css: str = "") -> Report:
        cls = f' class="{css}"' if css else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def bullets(self, items: Sequence[str]) -> Report:
        self.parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        return self

    def figure(
        self, picture: Figure | np.ndarray | bytes, caption: str = "", alt: str = "", *, wide: bool = False
    ) -> Report:
        """An embedded picture; ``wide`` ones (method grids) take the page's full width."""
        alt_text = html.escape(alt or caption or "figure", quote=True)
        caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        css = ' class="wide"' if wide else ""
        self.parts.append(f'<figure{css}><img src="{png_uri(picture)}" alt="{alt_text}">{caption_html}</figure>')
        return self

    def table(self, rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> Report:
        if not rows:
            return self
        columns = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c, '')))}</td>" for c in columns) + "</tr>"
            for row in rows
        )
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def html(self) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>"
            + "\n".join(self.parts)
            + f'<p class="note">Made by whycam {__version__} on {stamp}.</p></body></html>\n'
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
