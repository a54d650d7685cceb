"""Name -> class tables for detectors and strategies, plugins, and validation from signatures.

Tables are explicit dicts filled by ``register_*`` decorators when a detector or strategy module
is imported; this module imports none of them. ``clad.models`` and ``clad.strategies`` import
every one of their modules, so a caller that needs the full tables imports those two packages
(``clad.config`` does). A constructor's keyword arguments are its config schema:
``validate_params`` validates a config dict against the signature (types and ranges included,
unknown keys rejected).

Plugins (``resolve``): a name that is not in a table is an import path
(``"my_package.my_module:MyDetector"``) or the name of an entry point of an installed package in
the group ``clad.detectors`` / ``clad.strategies``. A plugin class gets exactly what a built-in
gets; the caller checks that it is a detector (strategy) by passing the base class.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable
from importlib.metadata import entry_points
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
    """The built-in class registered as ``name``; a ``ConfigError`` listing the known ones."""
    if name not in table:
        raise ConfigError(
            f"{where}: {kind}.name: unknown {kind} {name!r}; known: {', '.join(sorted(table))}"
        )
    return table[name]


ENTRY_POINT_GROUPS = {"detector": "clad.detectors", "strategy": "clad.strategies"}
"""The entry-point groups in which installed packages offer detectors and strategies."""


def plugin_names(kind: str) -> list[str]:
    """The names of the entry points installed packages offer for ``kind``."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUPS[kind]))


def resolve(kind: str, name: str, base: type[Any], where: str) -> type[Any]:
    """The class a configuration names as its ``kind`` (``detector`` or ``strategy``): a built-in
    of the table, an import path ``"package.module:Class"``, or an entry point of the group
    ``ENTRY_POINT_GROUPS[kind]``. It must be a subclass of ``base``.

    Raises:
        ConfigError: one line naming ``where``, the name and what was expected: an unknown name
            (listing the built-ins and the installed plugins), a module that does not import, a
            missing attribute, or a class that is not a ``base``.
    """
    table = DETECTORS if kind == "detector" else STRATEGIES
    field = f"{where}: {kind}.name"
    expected = f"a subclass of {base.__module__}.{base.__qualname__}"
    found: Any
    if name in table:
        return table[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001  (any import failure is the plugin's: named)
            raise ConfigError(
                f"{field}: cannot import {module_name!r} ({type(err).__name__}: {err}); expected "
                f"'package.module:Class' naming {expected}, importable here"
            ) from None
        found = module
        for part in attribute.split("."):
            found = getattr(found, part, None)
        if found is None:
            raise ConfigError(f"{field}: module {module_name!r} has no {attribute!r}")
    else:
        offered = [ep for ep in entry_points(group=ENTRY_POINT_GROUPS[kind]) if ep.name == name]
        if not offered:
            plugins = plugin_names(kind)
            raise ConfigError(
                f"{field}: unknown {kind} {name!r}; built-in: {', '.join(sorted(table))}"
                + (f"; installed plugins: {', '.join(plugins)}" if plugins else "")
                + "; or name a class by its import path, 'package.module:Class'"
            )
        try:
            found = offered[0].load()
        except Exception as err:  # noqa: BLE001
            raise ConfigError(
                f"{field}: the entry point {name!r} ({offered[0].value}) does not load "
                f"({type(err).__name__}: {err})"
            ) from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(f"{field}: {name!r} is {found!r}, not {expected}")
    return found


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


SHOWN_LIMIT = 100  # characters of a value an error message repeats


def shown(field: str, value: Any) -> str:
    """A value for an error message: never the value of a key that looks like a secret, and
    at most ``SHOWN_LIMIT`` characters of its ``repr`` (a 5 MB value is not echoed whole)."""
    last = field.rsplit(".", 1)[-1].lower()
    if any(word in last for word in SECRET_WORDS):
        return "<hidden>"
    text = repr(value)
    if len(text) <= SHOWN_LIMIT:
        return text
    return f"{text[: SHOWN_LIMIT - 20]}... ({len(text)} characters)"


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
