"""The errors whycam raises on purpose, one family under ``WhycamError``.

A caller (the CLI, an engine over a dataset, the explorer) catches ``WhycamError`` once; the
subclass says whose problem it is. Each also subclasses the builtin it replaced (``ValueError``,
``OSError``, ``KeyError``), so ``except ValueError`` written against older versions still works.

- ``UsageError``: a bad argument or option (unknown method or option, a missing reference, a layer
  the model does not have).
- ``InputError``: an input that cannot be used (an unreadable image, an empty folder).
- ``ModelError``: a model that cannot be loaded or run as asked.
- ``ReferenceGroupError``: a reference group that cannot answer (too few images, statistics of
  another model or layer, a question that needs a per-class bank).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class WhycamError(Exception):
    """Base of every error whycam raises on purpose, with a message that names the fix."""


class UsageError(WhycamError, ValueError):
    """A bad argument: unknown method, option, metric or layer; options that do not go together."""


class InputError(WhycamError):
    """An input that cannot be used: an unreadable image file, a folder without images."""


class ModelError(WhycamError, ValueError):
    """A model that cannot be loaded, or cannot be explained as asked."""


class ReferenceGroupError(WhycamError, ValueError):
    """A reference group (DiffCAM's question) that is missing, too small or does not fit the model."""


def closest(name: str, known: Iterable[str]) -> str:
    """``"closest: a, b"`` among ``known`` for a mistyped ``name`` (empty text when none is close)."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""
