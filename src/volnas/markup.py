"""Literal text inside rich markup: file names, messages and class names printed as written.

Everything user-controlled that goes into a ``console.print`` string passes through
:func:`esc`; ``[red]``, ``[covid]`` or pydantic's ``[type=int_parsing ...]`` then print as
they are instead of being read as style tags and dropped.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def esc(value: object) -> str:
    """``str(value)`` with rich markup escaped, for interpolation into a markup string."""
    return escape(str(value))


def print_error(console: Console, message: object) -> None:
    """``error: MESSAGE`` in red on ``console``; the message is printed literally, unwrapped."""
    console.print(f"[red]error:[/] {esc(message)}", soft_wrap=True)


def print_warning(console: Console, message: object) -> None:
    """``warning: MESSAGE`` in yellow on ``console``; the message is printed literally."""
    console.print(f"[yellow]warning:[/] {esc(message)}", soft_wrap=True)
