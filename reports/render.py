"""A report as a list of blocks, written as one self-contained HTML page and its Markdown twin.

The HTML inlines every image as a ``data:image/png;base64`` URI and its stylesheet, so the one file can
be mailed or attached to an issue; the Markdown twin references the same PNGs written into
``<stem>_files/`` beside it. Both files are written under a temporary name, then renamed.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1180px;
       padding: 0 1.2rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #1f77b4; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .86rem; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .55rem; text-align: right; }
th { background: #f3f5f8; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0 1rem; }
pre { background: #f6f8fa; padding: .7rem; overflow-x: auto; font-size: .8rem; }
.note { color: #555; font-size: .88rem; }
ul.assumptions li { font-size: .88rem; }
"""


@dataclass
class Report:
    """Blocks in page order: headings, text, tables, images, preformatted text."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading."""
        self.blocks.append(("h", (level, text)))

    def text(self, text: str, note: bool = False) -> None:
        """A paragraph (``note``: smaller, grey)."""
        self.blocks.append(("p", (text, note)))

    def bullets(self, items: list[str]) -> None:
        """A bulleted list."""
        self.blocks.append(("ul", items))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        """A table; cells are formatted with ``fmt``."""
        self.blocks.append(("table", (headers, [[fmt(c) for c in row] for row in rows])))

    def image(self, name: str, png: bytes, alt: str) -> None:
        """A chart; ``name`` becomes its file name in the Markdown twin's folder."""
        taken = {v[0] for k, v in self.blocks if k == "img"}
        slug, i = _slug(name), 1
        while slug in taken:
            i += 1
            slug = f"{_slug(name)}_{i}"
        self.blocks.append(("img", (slug, png, alt)))

    def pre(self, text: str, summary: str = "") -> None:
        """Preformatted text, folded under ``summary`` when given."""
        self.blocks.append(("pre", (text, summary)))

    @property
    def num_images(self) -> int:
        """Charts in the report."""
        return sum(1 for kind, _ in self.blocks if kind == "img")

    # ------------------------------------------------------------------------------------------ output

    def to_html(self) -> str:
        """The self-contained page."""
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for kind, value in self.blocks:
            if kind == "h":
                level, text = value
                out.append(f"<h{level}>{html.escape(text)}</h{level}>")
            elif kind == "p":
                text, note = value
                out.append(f'<p class="note">{html.escape(text)}</p>' if note else f"<p>{html.escape(text)}</p>")
            elif kind == "ul":
                out.append('<ul class="assumptions">' + "".join(f"<li>{html.escape(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                headers, rows = value
                head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "img":
                name, png, alt = value
                data = base64.b64encode(png).decode("ascii")
                out.append(f'<img alt="{html.escape(alt)}" data-name="{name}" src="data:image/png;base64,{data}">')
            elif kind == "pre":
                text, summary = value
                block = f"<pre>{html.escape(text)}</pre>"
                out.append(f"<details><summary>{html.escape(summary)}</summary>{block}</details>" if summary else block)
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def to_markdown(self, files_dir: str) -> str:
        """The Markdown twin; images are ``files_dir/<name>.png``."""
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                level, text = value
                out += ["#" * level + " " + text, ""]
            elif kind == "p":
                text, note = value
                out += [f"*{text}*" if note else text, ""]
            elif kind == "ul":
                out += [f"- {i}" for i in value] + [""]
            elif kind == "table":
                headers, rows = value
                out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "img":
                name, _, alt = value
                out += [f"![{alt}]({files_dir}/{name}.png)", ""]
            elif kind == "pre":
                text, summary = value
                if summary:
                    out.append(f"<details><summary>{summary}</summary>\n")
                out += ["```", text.rstrip("\n"), "```"]
                out += ["</details>", ""] if summary else [""]
        return "\n".join(out)

    def write(self, html_path: Path) -> tuple[Path, Path]:
        """Write ``<stem>.html``, ``<stem>.md`` and ``<stem>_files/*.png``; returns the two page paths."""
        html_path = Path(html_path)
        html_path.parent.mkdir(parents=True, exist_ok=True)
        files = html_path.with_name(html_path.stem + "_files")
        files.mkdir(exist_ok=True)
        for kind, value in self.blocks:
            if kind == "img":
                name, png, _ = value
                _atomic_write(files / f"{name}.png", png)
        md_path = html_path.with_suffix(".md")
        _atomic_write(md_path, self.to_markdown(files.name).encode())
        _atomic_write(html_path, self.to_html().encode())
        return html_path, md_path


def fmt(value: Any) -> str:
    """A table cell: numbers to 4 significant digits (thousands separated), None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def percent(value: float | None, digits: int = 1) -> str:
    """``0.123`` -> ``12.3%``; None -> ``unknown``."""
    return "unknown" if value is None else f"{100 * value:.{digits}f}%"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "_", name).strip("_") or "chart"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
