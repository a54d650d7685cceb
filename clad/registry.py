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

DETECTORS: dict[str, type[Any]] = {}
STRATEGIES: dict[str, type[Any]] = {}


def _register(
    table: dict[str, type[Any]], kind: str
) -> Callable[[str], Callable[[type[Any]], type[Any]]]:
    def register(name: str) -> Callable[[type[Any]], type[Any]]:
        def decorate(cls: type[Any]) -> type[Any]:
            if name in table:
                raise RuntimeError(f"{kind} {name!r} is registered twice")
            cls.name = name
            table[name] = cls
            return cls

        return decorate

    return register


register_detector = _register(DETECTORS, "detector")
register_strategy = _register(STRATEGIES, "strategy")


def detector_table() -> dict[str, type[Any]]:
    """Name -> detector class of every detector module imported so far (all of them once
    ``clad.models`` is imported)."""
    return DETECTORS


def strategy_table() -> dict[str, type[Any]]:
    """Name -> strategy class of every strategy module imported so far (all of them once
    ``clad.strategies`` is imported)."""
    return STRATEGIES


def lookup(table: dict[str, type[Any]], name: str, kind: str, where: str) -> type[Any]:
    if name not in table:
        raise ConfigError(
            f"{where}: {kind}.name: unknown {kind} {name!r}; known: {', '.join(sorted(table))}"
        )
    return table[name]


def signature_model(cls: type[Any], context: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic model of ``cls.__init__``'s keyword arguments, minus the ``context`` ones.

    Context arguments are supplied by the runner (a detector factory, the task list, the
    training settings), not by the config. Ranges declared in the hints
    (``Annotated[float, Field(gt=0, le=1)]``, pydantic's ``PositiveInt``, ...) are checked.
    """
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
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


def parameter_names(cls: type[Any]) -> list[str]:
    """The keyword arguments of ``cls``'s constructor, in order."""
    return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]


def validate_params(
    cls: type[Any],
    params: dict[str, Any],
    where: str,
    context: tuple[str, ...] = (),
    blame: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """Validate ``params`` against ``cls``'s signature; errors name ``<where>.<field>``
    (``where`` is ``"<source>: <block>"`` or a block name; see ``format_validation_error``)."""
    model = signature_model(cls, context)
    try:
        return model(**params).model_dump()
    except ValidationError as err:
        source, _, block = where.rpartition(": ")
        raise ConfigError(format_validation_error(err, model, source, block, blame)) from None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The nested pydantic model that holds the field at ``loc`` (for listing allowed keys)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


SECRET_WORDS = ("key", "token", "secret", "password", "credential")


def shown(field: str, value: Any) -> str:
    """A value for an error message; never the value of a key that looks like a secret."""
    last = field.rsplit(".", 1)[-1].lower()
    return "<hidden>" if any(word in last for word in SECRET_WORDS) else repr(value)


def format_validation_error(
    err: ValidationError,
    model: type[BaseModel],
    source: str,
    prefix: str = "",
    blame: Callable[[str], str | None] | None = None,
) -> str:
    """One line per problem, ``<source>: <field>: <what is wrong>; <what is allowed>``, with
    ``field`` the dotted key under ``prefix``; ``blame(field)`` may name another source for a
    field (``--set <key>`` for a value set on the command line). Values of keys that look like
    secrets are never printed."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        field = f"{prefix}.{loc}" if prefix else loc
        origin = (blame(field) if blame else None) or source
        head = f"{origin}: {field}" if origin else field
        value = shown(field, e.get("input"))
        if e["type"] == "extra_forbidden":
            holder = _model_at(model, e["loc"])
            allowed = ", ".join(holder.model_fields) if holder else "see the documentation"
            lines.append(f"{head}: unknown key (value {value}); allowed keys: {allowed}")
        elif e["type"] == "missing":
            lines.append(f"{head}: required but missing")
        else:
            lines.append(f"{head}: {e['msg']} (got {value})")
    return "\n".join(lines)
