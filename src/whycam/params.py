"""Parameters in scikit-learn's shape: ``get_params``, ``set_params`` and ``clone``.

An object's parameters are its constructor's keyword arguments, each stored under its own name;
what fitting learns is exposed in attributes ending in ``_`` (``reference_``) and is absent until
``fit`` sets it, so a new object holds only parameters and empty caches. ``clone``
builds a new, unfitted object from the parameters alone: it shares the parameter values (the model
itself is never copied) and nothing else, so no cache or fitted state is shared.
"""

from __future__ import annotations

import inspect
from typing import TypeVar

P = TypeVar("P", bound="Params")


class Params:
    """``get_params`` / ``set_params`` / ``clone`` from the constructor's signature."""

    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's parameter names, in order."""
        signature = inspect.signature(cls.__init__)
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [name for name, p in signature.parameters.items() if name != "self" and p.kind in kinds]

    def get_params(self, deep: bool = False) -> dict[str, object]:
        """The parameters, by name (``deep`` is accepted for scikit-learn's API; there are no nested ones)."""
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self: P, **params: object) -> P:
        """Change parameters and return ``self``. The values are validated by the constructor, whose
        attributes (the parameters and the caches it resets) replace this object's; what ``fit`` set
        is kept, and checked against the new parameters when it is next used."""
        valid = self.param_names()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no parameter {', '.join(unknown)}; its parameters are {', '.join(valid)}"
            )
        vars(self).update(vars(type(self)(**{**self.get_params(), **params})))
        return self

    def clone(self: P) -> P:
        """A new unfitted object with the same parameters (scikit-learn's ``clone``)."""
        return type(self)(**self.get_params())
