"""Class names: which class is the positive one (docs/design.md, section 3).

The rule, used by the index (the manifest's ``positive_class``) and by every metric:

1. the class named by the user, when given (it must be one of the classes);
2. else the first class whose name, lower-cased with ``_``/``-``/spaces removed, is in
   :data:`POSITIVE_ALIASES`;
3. else, for two classes of which exactly one is in :data:`NEGATIVE_ALIASES`, the other one;
4. else the class at index 1 (the usual "abnormal = 1" of binary data); with fewer than two
   classes there is none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

POSITIVE_ALIASES = ("covid", "covid19", "ncp")
NEGATIVE_ALIASES = ("normal", "healthy", "negative", "noncovid", "0")


def normalize_name(name: str) -> str:
    """A class name as the alias lists spell it: lower case, no ``_``, ``-`` or spaces."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def positive_class(classes: Sequence[str], given: str | None = None) -> str | None:
    """The positive class of ``classes`` by the module rule; None for fewer than two classes.

    ``given`` (the user's choice) wins and must be one of ``classes`` (ValueError otherwise).
    """
    names = list(classes)
    if given is not None:
        if given not in names:
            raise ValueError(f"positive_class {given!r} is not one of {names}")
        return given
    for c in names:
        if normalize_name(c) in POSITIVE_ALIASES:
            return c
    if len(names) < 2:
        return None
    if len(names) == 2:
        negative = [c for c in names if normalize_name(c) in NEGATIVE_ALIASES]
        if len(negative) == 1:
            return next(c for c in names if c != negative[0])
    return names[1]
