"""A report: markdown with tables and PNG figures, written into a run directory (report.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lmforge.atomic import atomic_write_text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """Collects sections in order; `write()` renders report.md next to its figures."""

    def __init__(self, title: str, out_dir: str | Path) -> None:
        self.title = title
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = []

    def text(self, markdown: str) -> None:
        self.parts.append(markdown.strip())

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[object]], caption: str = ""
    ) -> None:
        self.parts.append((f"**{caption}**\n\n" if caption else "") + markdown_table(headers, rows))

    def figure(self, filename: str, caption: str) -> Path:
        """Reserve `filename` in the report; the caller draws the PNG at the returned path."""
        self.parts.append(f"![{caption}]({filename})\n\n*{caption}*")
        return self.out_dir / filename

    def write(self) -> Path:
        path = self.out_dir / "report.md"
        atomic_write_text(path, f"# {self.title}\n\n" + "\n\n".join(self.parts) + "\n")
        return path
