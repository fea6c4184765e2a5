"""``create(name, model, **options)``: a registered method by name, strictly.

An unknown name is refused with the closest registered names, an unknown option with the method's
valid keys (the keyword parameters of its constructor, following ``**options`` up to its bases).
``smoothgrad`` wraps any registered method: ``create("smoothgrad", model, explainer="gradcam",
layer="features", noise=0.1)`` gives SmoothGrad its own options and the wrapped method the rest.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from torch import nn

from ..errors import UsageError, closest
from .base import Explainer, methods
from .gradient import SmoothGrad

WRAPPED = "explainer"  # the option of ``smoothgrad`` naming the method it smooths


def constructor_options(cls: type) -> set[str]:
    """The keyword names an explainer class accepts, following ``**options`` up to its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self", "model"}


def method_class(name: str) -> type[Explainer]:
    """The registered class of ``name``; an unknown name lists the closest ones."""
    registry = methods()
    if name not in registry:
        raise UsageError(
            f"unknown method {name!r}{closest(name, registry)}; registered: {', '.join(registry)} "
            "(see `whycam methods`)"
        )
    return registry[name]


def option_names(name: str, options: Mapping[str, object] | None = None) -> set[str]:
    """Every option ``create(name, model, **options)`` accepts (for smoothgrad: its own and those of
    the method named by ``options["explainer"]``, saliency by default)."""
    keys = constructor_options(method_class(name))
    if method_class(name) is SmoothGrad:
        wrapped = (options or {}).get(WRAPPED, "saliency")
        keys |= option_names(wrapped) if isinstance(wrapped, str) else set()
    return keys


def create(name: str, model: nn.Module, **options: object) -> Explainer:
    """The registered method ``name`` on ``model`` with ``options``; unknown options are refused."""
    cls = method_class(name)
    unknown = sorted(set(options) - option_names(name, options))
    if unknown:
        valid = ", ".join(sorted(option_names(name, options))) or "(none)"
        raise UsageError(f"{name} has no option {', '.join(map(repr, unknown))}; its options: {valid}")
    if cls is not SmoothGrad:
        return cls(model, **options)
    own = constructor_options(SmoothGrad) - {WRAPPED}
    settings = {key: value for key, value in options.items() if key in own}
    wrapped = options.get(WRAPPED, "saliency")
    rest = {key: value for key, value in options.items() if key not in own and key != WRAPPED}
    inner = wrapped if isinstance(wrapped, Explainer) else create(str(wrapped), model, **rest)
    return SmoothGrad(inner, **settings)
