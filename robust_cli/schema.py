"""One source of truth for every option: Hydra schemas derived from the code that takes the options.

An attack's options are the keyword arguments of its function, a defense's or an architecture's the
arguments of its constructor; :func:`schema_of` turns that signature into the dataclass that Hydra's
ConfigStore validates the YAML against (``<group>/<name>_schema``). The default of an option is therefore
written once, in the signature, and a YAML file carries only what differs from it (the agreement test,
``tests/test_option_agreement.py``, fails when a YAML repeats or contradicts a default).

An object may instead take its options as one dataclass (``obj.options`` names it; the primal-dual attacks
do, so that PDGD and PDPGD share one set of defaults): the schema is then that dataclass's fields.

Type mapping (the types OmegaConf can check at compose time):

- ``int``, ``float``, ``bool``, ``str`` and ``Optional`` of them: as written;
- ``Literal["a", "b"]``: ``str`` (the code checks the choice);
- ``Sequence[T]``, ``tuple[T, ...]``, ``list[T]``: ``list[T]``, the default copied into a factory;
- anything else (``object``, unions with tensors): ``Any``;
- ``Annotated[T, Range(...)]``: ``T``, and the value must lie in the range.
- ``Annotated[list[T], Length(ge=n)]``: ``list[T]`` with at least ``n`` entries.

What OmegaConf cannot check (a choice of a ``Literal``, a ``Range``) :func:`check_options` does, when
``robust`` validates the command line and when an app starts (``robust_cli.config.check_config``), so a bad
value fails in one line before anything runs, for single runs and every job of a multirun alike.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import sys
import types
import typing
from typing import Any, Optional

from omegaconf import MISSING

from robust_cli.errors import UserError

#: arguments an attack's caller supplies, never config options (the model and batch, the evaluation's norm
#: and eps, the training set of the data stability attack, ``x_init`` ``[B,C,H,W]``: a starting
#: adversarial per image, e.g. the best one of the attacks run before, for attacks that refine one, and the
#: eps search's ``early_stop``, ``probe`` and ``stopped``, see ``evaluation/adaptive_search.py``)
ATTACK_ARGUMENTS = frozenset({"model", "x", "y", "norm", "eps", "reference", "x_init", "early_stop", "probe",
                              "stopped"})
#: arguments a class's builder supplies (an architecture's data shape)
CLASS_ARGUMENTS = frozenset({"self", "in_shape", "num_classes"})

_SCALARS = (int, float, bool, str)


@dataclasses.dataclass(frozen=True)
class Range:
    """The accepted interval of a numeric option, written in its signature: ``Annotated[int, Range(ge=1)]``.

    ``ge``/``gt``: lower bound (inclusive/exclusive), ``le``/``lt``: upper bound; ``None`` = unbounded.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, value: float) -> bool:
        return not ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                    or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))

    def __str__(self) -> str:
        parts = [f"{op} {bound:g}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le),
                                                       ("<", self.lt)) if bound is not None]
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class Length:
    """The accepted number of entries of a list option: ``Annotated[list[int], Length(ge=1)]`` (non-empty)."""

    ge: int = 0

    def admits(self, value: collections.abc.Sized) -> bool:
        return len(value) >= self.ge

    def __str__(self) -> str:
        return f"a list of at least {self.ge} entr{'y' if self.ge == 1 else 'ies'}"


@dataclasses.dataclass(frozen=True, init=False)
class OneOf:
    """The accepted values of an option whose type OmegaConf checks as a plain ``str`` (the top-level
    schemas of ``robust_cli.config``, where ``Literal`` is not available): ``Annotated[str, OneOf("a", "b")]``."""

    choices: tuple

    def __init__(self, *choices: Any):
        object.__setattr__(self, "choices", tuple(choices))


@dataclasses.dataclass(frozen=True)
class NonEmpty:
    """A string or list option that must not be empty: ``Annotated[str, NonEmpty()]``."""


@dataclasses.dataclass(frozen=True)
class Check:
    """A rule no other marker states: ``Annotated[str, Check(problem)]``, ``problem(value)`` returning what is
    wrong with ``value`` (None: nothing), e.g. a member of ``attack=minimal`` written with options."""

    problem: collections.abc.Callable[[Any], str | None]


def _schema_type(annotation: Any) -> Any:
    """The OmegaConf-checkable type for a signature annotation (see the module docstring)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _schema_type(typing.get_args(annotation)[0])
    if annotation in _SCALARS:
        return annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        return kinds.pop() if len(kinds) == 1 and next(iter(kinds), None) in _SCALARS else Any
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(args):
            inner = _schema_type(rest[0])
            return Any if inner is Any else Optional[inner]
        return Any
    if origin in (list, tuple, collections.abc.Sequence):
        homogeneous = origin is not tuple or len(set(args) - {Ellipsis}) <= 1
        return list[_schema_type(args[0]) if args and homogeneous else Any]
    return Any


def _field(annotation: Any, default: Any) -> tuple[Any, Any]:
    """``(type, dataclasses.field)`` for one option; sequences get a factory (dataclasses refuse lists)."""
    kind = _schema_type(annotation)
    if default is inspect.Parameter.empty or default is dataclasses.MISSING:
        return kind, dataclasses.field(default=MISSING)
    if isinstance(default, (list, tuple)):
        frozen = list(default)
        return kind, dataclasses.field(default_factory=lambda: list(frozen))
    return kind, dataclasses.field(default=default)


def _dataclass_options(spec: type) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(spec, include_extras=True)
    out = {}
    for f in dataclasses.fields(spec):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty
        out[f.name] = (hints[f.name], default)
    return out


def _signature_options(fn: Any, skip: frozenset[str], out: dict[str, tuple[Any, Any]]) -> bool:
    """Add ``fn``'s keyword parameters not yet in ``out``; True when ``fn`` forwards ``**kwargs``."""
    hints = typing.get_type_hints(fn, include_extras=True)
    forwards = False
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind is param.VAR_KEYWORD:
            forwards = True
        if name in skip or name in out or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(f"{fn.__qualname__}: option {name!r} must be passable by keyword")
        out[name] = (hints.get(name, Any), param.default)
    return forwards


def options_of(obj: Any) -> dict[str, tuple[Any, Any]]:
    """``{option: (annotation, default)}`` of an attack function or a defense/architecture class.

    ``default`` is ``inspect.Parameter.empty`` for a required option. Where the options are:

    - ``obj.options`` is a dataclass: its fields (the object builds it from its ``**options``);
    - a function: its parameters, less ``ATTACK_ARGUMENTS``;
    - a class: the parameters of ``__init__``, less ``CLASS_ARGUMENTS``; where ``__init__`` forwards
      ``**kwargs`` to its parent's, the parent's parameters follow (a subclass restates only the defaults
      it changes), and ``**kwargs`` that reach the top are the fields of the dataclass ``obj.kwargs_schema``.
    """
    spec = getattr(obj, "options", None)
    if spec is not None and dataclasses.is_dataclass(spec):
        return _dataclass_options(spec)
    out: dict[str, tuple[Any, Any]] = {}
    if not inspect.isclass(obj):
        _signature_options(obj, ATTACK_ARGUMENTS, out)
        return out
    for klass in obj.__mro__:
        if klass is object:
            break
        if "__init__" in vars(klass) and not _signature_options(vars(klass)["__init__"], CLASS_ARGUMENTS, out):
            return out
    rest = getattr(obj, "kwargs_schema", None)
    if rest is not None:
        out.update({k: v for k, v in _dataclass_options(rest).items() if k not in out})
    return out


def target_of(obj: Any) -> str:
    """The dotted import path Hydra's ``_target_`` names for ``obj``."""
    return f"{obj.__module__}.{obj.__qualname__}"


def schema_of(obj: Any, name: str, *, extra: dict[str, tuple[Any, Any]] | None = None) -> type:
    """The Hydra schema of ``obj``'s options: ``_target_``, ``name``, ``extra`` and every option.

    Args:
        obj: an attack function, a defense class or an architecture class.
        name: the YAML file name (``model=<name>``), stored as the config's ``name``.
        extra: options handled by the builder rather than ``obj`` (``{key: (type, default)}``, e.g. a
            model's ``tanh_head``).

    Returns:
        a dataclass named ``<Obj>Schema``, with ``obj`` and its option names on ``__robust_options__``.
    """
    fields = [("_target_", str, dataclasses.field(default=target_of(obj))),
              ("name", str, dataclasses.field(default=name))]
    for key, (annotation, default) in {**options_of(obj), **(extra or {})}.items():
        fields.append((key, *_field(annotation, default)))
    class_name = "".join(part[:1].upper() + part[1:] for part in name.split("_")) + "Schema"
    schema = dataclasses.make_dataclass(class_name, fields)
    schema.__doc__ = f"Options of {target_of(obj)} (derived from its signature by robust_cli.schema)."
    schema.__robust_target__ = obj
    # an importable home, so that configs typed by it pickle (DDP workers, submitit jobs receive them)
    schema.__module__, schema.__qualname__ = obj.__module__, class_name
    setattr(sys.modules[obj.__module__], class_name, schema)
    return schema


def defaults_of(schema: type) -> dict[str, Any]:
    """``{field: default}`` of a schema made by :func:`schema_of` (``MISSING`` for required fields)."""
    out = {}
    for f in dataclasses.fields(schema):
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def _rules(annotation: Any) -> tuple[list[Any], tuple | None, Any]:
    """``(ranges, lengths and NonEmpty markers, choices, item annotation of a list or a dict's values)`` an
    annotation states (``Optional`` looked through)."""
    ranges: list[Any] = []
    choices: tuple | None = None
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extras = typing.get_args(annotation)
            ranges += [e for e in extras if isinstance(e, (Range, Length, NonEmpty, Check))]
            choices = next((e.choices for e in extras if isinstance(e, OneOf)), choices)
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return ranges, None, None
            annotation = rest[0]
        else:
            break
    if origin is typing.Literal:
        return ranges, typing.get_args(annotation), None
    if origin in (list, tuple, collections.abc.Sequence) and typing.get_args(annotation):
        return ranges, choices, typing.get_args(annotation)[0]
    if origin in (dict, collections.abc.Mapping) and len(typing.get_args(annotation)) == 2:
        return ranges, choices, typing.get_args(annotation)[1]
    return ranges, choices, None


def _problem(annotation: Any, value: Any) -> str | None:
    """What is wrong with ``value`` for ``annotation`` (None: nothing)."""
    if value is None:
        return None
    ranges, choices, item = _rules(annotation)
    if choices is not None and value not in choices:
        return "expected one of " + ", ".join(str(c) for c in choices)
    if isinstance(value, (list, tuple)):
        short = [r for r in ranges if isinstance(r, Length) and not r.admits(value)]
        if short:
            return "must be " + " and ".join(str(r) for r in short)
    if any(isinstance(r, NonEmpty) for r in ranges) and isinstance(value, (str, list, tuple, dict)) and \
            not (value.strip() if isinstance(value, str) else value):
        return "must not be empty"
    for check in (r for r in ranges if isinstance(r, Check)):
        problem = check.problem(value)
        if problem:
            return problem
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = [r for r in ranges if isinstance(r, Range)]
        if bounds and value != value:  # NaN lies in no range
            return "must be a number, not nan"
        bad = [r for r in bounds if not r.admits(value)]
        if bad:
            return "must be " + " and ".join(str(r) for r in bad)
    if item is not None and isinstance(value, (list, tuple, dict)):
        for v in value.values() if isinstance(value, dict) else value:
            problem = _problem(item, v)
            if problem:
                return f"each entry: {problem}"
    return None


def check_schema_values(node: Any, where: str = "") -> None:
    """Raise ``UserError`` (``<where><key>=<value>: <what is accepted>``) for the first value of a composed
    config node outside what its dataclass schema's annotations state (``Annotated[int, Range(ge=1)]``,
    ``OneOf``, ``NonEmpty``), recursing into typed sub-nodes (``robust_cli.config``'s top-level schemas)."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return
    kind = OmegaConf.get_type(node)
    hints = typing.get_type_hints(kind, include_extras=True) if dataclasses.is_dataclass(kind) else {}
    for key in node:
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            if "_target_" not in value:  # a model/defense/attack node: check_options checks it
                check_schema_values(value, f"{where}{key}.")
            if key not in hints:
                continue
            value = OmegaConf.to_container(value, resolve=True)
        elif key not in hints:
            continue
        elif not isinstance(value, (int, float, str, bool, type(None))):
            value = OmegaConf.to_container(value, resolve=True)
        _, _, item = _rules(hints[key])
        if isinstance(value, dict) and item is not None:  # name the entry: eps.linf=-0.1
            for k, v in value.items():
                problem = _problem(item, v)
                if problem:
                    raise UserError(f"{where}{key}.{k}={v!r}: {problem}")
        problem = _problem(hints[key], value)
        if problem:
            raise UserError(f"{where}{key}={value!r}: {problem}")


def check_known_keys(node: Any, where: str = "") -> None:
    """Raise ``UserError`` (``<where><key>: not an option of <node> (did you mean ...?)``) for the first key of
    a composed config node typed by a dataclass schema that the schema lacks, recursing into sub-nodes.

    Hydra refuses such a key when it is overridden (``attack.pgd.stepz=5``), but ``+key=value`` adds it to any
    node, where it would reach the attack's call (a ``TypeError`` mid-run) or silently name a run. Nodes that
    are plain dicts (``val_options``, ``eps``) take any key here.
    """
    import difflib

    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return
    kind = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else None
    for key in node:
        if fields is not None and key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else ""
            owner = f"{where.rstrip('.')}" if where else "the command"
            raise UserError(f"{where}{key}: not an option of {owner}{hint} (known: "
                            f"{', '.join(sorted(f for f in fields if not f.startswith('_')))})")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_known_keys(child, f"{where}{key}.")


def check_options(obj: Any, values: collections.abc.Mapping, where: str) -> None:
    """Raise ``UserError`` (one line: ``<where>.<option>=<value>: <what is accepted>``) for the first option in
    ``values`` outside what ``obj``'s signature states (a ``Literal`` choice, a ``Range``)."""
    for key, (annotation, _) in options_of(obj).items():
        if key in values:
            problem = _problem(annotation, values[key])
            if problem:
                raise UserError(f"{where}.{key}={values[key]!r}: {problem}")
