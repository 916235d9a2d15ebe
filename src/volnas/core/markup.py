"""Literal text inside rich markup: file names, messages and class names printed as written.

Everything user-controlled that goes into a ``console.print`` string passes through
:func:`esc`; ``[red]``, ``[covid]`` or pydantic's ``[type=int_parsing ...]`` then print as
they are instead of being read as style tags and dropped.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.rule import Rule


def esc(value: object) -> str:
    """``str(value)`` with rich markup escaped, for interpolation into a markup string."""
    return escape(str(value))


def print_error(console: Console, message: object) -> None:
    """``error: MESSAGE`` in red on ``console``; the message is printed literally, unwrapped."""
    console.print(f"[red]error:[/] {esc(message)}", soft_wrap=True)


def print_warning(console: Console, message: object) -> None:
    """``warning: MESSAGE`` in yellow on ``console``; the message is printed literally."""
    console.print(f"[yellow]warning:[/] {esc(message)}", soft_wrap=True)


# Width of a console that is not a terminal (a log file, a pipe, CI): wide enough that no
# line or table is cut or wrapped; rich's default there is 80 columns.
LOG_WIDTH = 4000


class _Console(Console):
    """A rich Console that uses the terminal's width in a terminal and never wraps
    elsewhere (``COLUMNS`` still wins when set)."""

    @property  # type: ignore[override]
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in self._environ:
            return ConsoleDimensions(LOG_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size

    def rule(self, title: Any = "", *, characters: str = "─", style: Any = "rule.line",
             align: Any = "center") -> None:
        """A horizontal rule, 80 columns wide in a log (not the log's unlimited width)."""
        if self.size.width != LOG_WIDTH:
            super().rule(title, characters=characters, style=style, align=align)
            return
        self.print(Rule(title, characters=characters, style=style, align=align), width=80)


def make_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    """The console every volnas command and library function prints to."""
    return _Console(stderr=stderr, quiet=quiet, soft_wrap=False)
