"""Name -> class tables for detectors and strategies, and validated construction from config.

Tables are explicit dicts filled by ``register_*`` decorators when a detector or strategy module
is imported; this module imports none of them. ``clad.models`` and ``clad.strategies`` import
every one of their modules, so a caller that needs the full tables imports those two packages
(``clad.config`` does). A constructor's keyword arguments are its
config schema: ``build`` validates a config dict against the signature (types included, unknown
keys rejected) before calling it.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from clad.errors import ConfigError

DETECTORS: dict[str, type] = {}
STRATEGIES: dict[str, type] = {}


def _register(table: dict[str, type], kind: str) -> Callable[[str], Callable[[type], type]]:
    def register(name: str) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            if name in table:
                raise RuntimeError(f"{kind} {name!r} is registered twice")
            cls.name = name
            table[name] = cls
            return cls

        return decorate

    return register


register_detector = _register(DETECTORS, "detector")
register_strategy = _register(STRATEGIES, "strategy")


def detector_table() -> dict[str, type]:
    """Name -> detector class of every detector module imported so far (all of them once
    ``clad.models`` is imported)."""
    return DETECTORS


def strategy_table() -> dict[str, type]:
    """Name -> strategy class of every strategy module imported so far (all of them once
    ``clad.strategies`` is imported)."""
    return STRATEGIES


def lookup(table: dict[str, type], name: str, kind: str, where: str) -> type:
    if name not in table:
        raise ConfigError(f"{where}: unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def signature_model(cls: type, context: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic model of ``cls.__init__``'s keyword arguments, minus the ``context`` ones.

    Context arguments are supplied by the runner (a detector factory, the task list), not by
    the config.
    """
    hints = typing.get_type_hints(cls.__init__)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or name in context:
            continue
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            raise TypeError(f"{cls.__name__}.__init__ must not take *args/**kwargs")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(
        f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid", strict=False), **fields
    )


def parameter_names(cls: type) -> list[str]:
    return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]


def validate_params(
    cls: type, params: dict[str, Any], where: str, context: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Validate ``params`` against ``cls``'s signature; errors name ``where.<field>``."""
    model = signature_model(cls, context)
    try:
        return model(**params).model_dump()
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where, model)) from None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The nested pydantic model that holds the field at ``loc`` (for listing allowed keys)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def format_validation_error(err: ValidationError, where: str, model: type[BaseModel]) -> str:
    """One line per problem: ``<where>.<field>: <what is wrong> (got <value>)``."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        name = f"{where}.{field}" if where else field
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            holder = _model_at(model, e["loc"])
            allowed = ", ".join(holder.model_fields) if holder else "see the documentation"
            lines.append(f"{name}: unknown key (value {value!r}); allowed keys: {allowed}")
        elif e["type"] == "missing":
            lines.append(f"{name}: required but missing")
        else:
            lines.append(f"{name}: {e['msg']} (got {value!r})")
    return "\n".join(lines)
