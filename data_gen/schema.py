"""Typed configs: one dataclass per command is the schema of its CLI flags, YAML keys and checks.

An option is declared once, as a dataclass field with an attribute docstring (litgpt's style):

    @dataclass
    class GenConfig:
        num_docs: int | None = None
        \"\"\"Documents to sample; None = all.\"\"\"

and everything else is derived from it: `add_arguments` writes the argparse flag (`--num-docs`,
its type, its choices and its help with the default), `build` reads a YAML mapping or the parsed
flags into the dataclass. Both collect *every* problem — unknown keys at any depth, wrong types,
values the class's `__post_init__` refuses — and raise one `ConfigError` listing them with their
key paths, before anything runs.

A field's metadata (made with `option` / `section`) tunes the derivation:
- `flag`: the option's name when it differs from the field's (`kind` is `--teacher`);
- `positional`: a positional argument instead of a flag;
- `cli=False`: YAML only;
- `shown`: the default as `--help` states it, where the field's own default (None) stands for
  something (`--base-url`: the provider's API root); a section's `shown` maps its fields' names
  to such texts for that use (the judge's `--judge-teacher`: no judge);
- `section(..., flatten=True, prefix=...)`: a nested config whose options sit beside the
  parent's (the teacher options of `nif gen`, the `judge_*` options of `nif filter`); an
  Optional flattened section is built only when one of its options is given.

Values are coerced the way a reader expects: numeric strings that PyYAML leaves as strings
(`lr: 5e-3`) are numbers, a single value is a one-element list, booleans are booleans only.

Checks that touch the world (files, environment, the Hub) are not done while building: a config
class may define `check_inputs(self) -> list[str]`, and `validate` runs them all at once.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """Every problem of a configuration, each naming its key path (or flag)."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            super().__init__(head + self.problems[0])
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"{head}{len(self.problems)} problems:\n{lines}")


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    flag: str | None = None,
    positional: bool = False,
    cli: bool = True,
    metavar: str | None = None,
    shown: str | None = None,
) -> Any:
    """A dataclass field with CLI metadata (see the module docstring)."""
    meta = {"flag": flag, "positional": positional, "cli": cli, "metavar": metavar}
    if shown is not None:
        meta["shown"] = shown
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def section(
    factory: Any = None,
    *,
    flatten: bool = False,
    prefix: str = "",
    title: str | None = None,
    defaults: dict[str, Any] | None = None,
    only: tuple[str, ...] | None = None,
    cli: bool = True,
    shown: dict[str, str] | None = None,
) -> Any:
    """A nested config field. `factory=None` makes it optional (None unless an option is given).
    `defaults` override the nested class's defaults for this use; `only` limits its options;
    `shown` overrides how `--help` states their defaults."""
    meta = {
        "flatten": flatten,
        "prefix": prefix,
        "title": title,
        "cli": cli,
        "defaults": dict(defaults or {}),
        "only": only,
        "shown": dict(shown or {}),
    }
    if factory is None:
        return dataclasses.field(default=None, metadata=meta)
    return dataclasses.field(default_factory=factory, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Reading the schema: fields, their types and their docstrings


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string right under a field), through the class's bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclasses.dataclass(frozen=True)
class Option:
    """One leaf option of a schema, as the CLI and a flat YAML section see it."""

    key: str  # its name in a flat mapping and on the command line (underscores)
    path: tuple[str, ...]  # field names from the root config down to it
    type: Any
    default: Any
    doc: str
    positional: bool = False
    metavar: str | None = None
    shown: str | None = None  # the default as --help states it, when not `default` itself

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


def _is_section(tp: Any) -> type | None:
    """The dataclass of a (possibly Optional) nested config field, else None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    if len(args) == 1 and dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
        return args[0]
    return None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def options(
    cls: type,
    *,
    prefix: str = "",
    path: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    only: tuple[str, ...] | None = None,
    cli_only: bool = False,
    shown: dict[str, str] | None = None,
) -> Iterator[Option]:
    """The flat options of `cls`: flattened sections inline, other sections skipped."""
    hints, docs = _hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init or (only is not None and f.name not in only):
            continue
        meta = f.metadata
        if cli_only and meta.get("cli") is False:
            continue
        nested = _is_section(hints[f.name])
        if nested is not None:
            if meta.get("flatten"):
                yield from options(
                    nested,
                    prefix=prefix + meta.get("prefix", ""),
                    path=(*path, f.name),
                    defaults=meta.get("defaults"),
                    only=meta.get("only"),
                    cli_only=cli_only,
                    shown=meta.get("shown"),
                )
            continue
        default = (defaults or {}).get(f.name, _default(f))
        # A use that sets its own default shows that value, not the field's stated text.
        stated = None if defaults and f.name in defaults else meta.get("shown")
        yield Option(
            key=prefix + (meta.get("flag") or f.name),
            path=(*path, f.name),
            type=hints[f.name],
            default=default,
            doc=docs.get(f.name, ""),
            positional=bool(meta.get("positional")),
            metavar=meta.get("metavar"),
            shown=(shown or {}).get(f.name, stated),
        )


def sections(cls: type) -> list[tuple[str, type]]:
    """The nested, not flattened, sections of `cls` (the `model:`, `lora:` ... of a YAML)."""
    hints = _hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        nested = _is_section(hints[f.name])
        if nested is not None and not f.metadata.get("flatten"):
            found.append((f.name, nested))
    return found


# ---------------------------------------------------------------------------------------------
# Values: coercion of YAML / CLI values to the field types


class _Bad(Exception):
    pass


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce(value: Any, tp: Any) -> Any:
    """`value` as type `tp`, or `_Bad` naming what was expected."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if _is_union(tp):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        # Strings last, so "8" is the integer 8 for `int | str`, and "auto" stays a string.
        for member in sorted(members, key=lambda m: m is str):
            if member is type(None):
                continue
            try:
                return coerce(value, member)
            except _Bad:
                pass
        raise _Bad(f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        for choice in typing.get_args(tp):
            try:
                if coerce(value, type(choice)) == choice:
                    return choice
            except _Bad:
                pass
        choices = ", ".join(str(c) for c in typing.get_args(tp))
        raise _Bad(f"must be one of {choices}, got {value!r}")
    if origin in (list, tuple):
        item = typing.get_args(tp)[0]
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        out = [coerce(v, item) for v in items]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Bad(f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _Bad(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise _Bad(f"expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)  # `5e-3`: PyYAML reads it as a string
        if number is not None and math.isfinite(number):
            return number
        raise _Bad(f"expected a finite number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Bad(f"expected a string, got {value!r}")
    if not isinstance(value, tp):
        raise _Bad(f"expected {_type_name(tp)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Building a config from a mapping (YAML) or from parsed flags


def build(
    cls: type,
    raw: Any,
    *,
    source: str = "config",
    path: str = "",
    name: Callable[[Option], str] | None = None,
) -> Any:
    """`cls` from `raw`, or one `ConfigError` listing every problem.

    `raw` is nested by section (`{"model": {"path": ...}}`); flattened sections' options sit
    beside their parent's (`{"teacher": "openai", "judge_model": ...}`). `path` prefixes the
    key paths in messages (`gen.num_docs`); `name` names an option in messages instead (flags).
    """
    problems: list[str] = []
    obj = _build(cls, raw, path, problems, name=name)
    if problems:
        raise ConfigError(problems, source)
    return obj


def _label(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build(cls: type, raw: Any, path: str, problems: list[str], *, name) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"`{path or 'top level'}` must be a mapping, got {raw!r}")
        return None
    raw = dict(raw)
    flat = list(options(cls))
    by_key = {o.key: o for o in flat}
    nested = dict(sections(cls))
    unknown = sorted(str(k) for k in raw if k not in by_key and k not in nested)
    for key in unknown:
        known = sorted([*by_key, *nested])
        problems.append(f"unknown key `{_label(path, key)}` (known: {', '.join(known)})")
    before = len(problems)
    values: dict[tuple[str, ...], Any] = {}
    for opt in flat:
        if opt.key not in raw:
            if opt.default is dataclasses.MISSING:
                label = name(opt) if name else _label(path, opt.key)
                problems.append(f"`{label}` is required")
            continue
        try:
            values[opt.path] = coerce(raw[opt.key], opt.type)
        except _Bad as bad:
            label = name(opt) if name else _label(path, opt.key)
            problems.append(f"`{label}`: {bad}")
    kwargs: dict[str, Any] = {}
    for field_name, sub in nested.items():
        kwargs[field_name] = _build(
            sub, raw.get(field_name), _label(path, field_name), problems, name=None
        )
    if len(problems) > before:
        return None  # typed values first; the class's own checks need them all
    return _construct(cls, values, (), path, problems, None, None, kwargs)


def _construct(cls, values, here, path, problems, defaults, only, extra=None):
    """Instantiate `cls` (and its flattened sections) from leaf values keyed by field path."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = dict(extra or {})
    for f in dataclasses.fields(cls):
        if not f.init or f.name in kwargs or (only is not None and f.name not in only):
            continue
        sub = _is_section(hints[f.name])
        key = (*here, f.name)
        if sub is not None and f.metadata.get("flatten"):
            given = any(p[: len(key)] == key for p in values)
            if f.default is None and not given:
                kwargs[f.name] = None  # an optional section nobody asked for
                continue
            meta = f.metadata
            kwargs[f.name] = _construct(
                sub, values, key, path, problems, meta.get("defaults"), meta.get("only")
            )
            if kwargs[f.name] is None:
                return None
        elif key in values:
            kwargs[f.name] = values[key]
        elif defaults and f.name in defaults:
            kwargs[f.name] = defaults[f.name]
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        text = str(err)
        named = not path or text.startswith(f"`{path}.")  # the message names its key already
        problems.append(text if named else f"`{path}`: {text}")
        return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The flat-by-section mapping `build` reads back (the inverse of `build`)."""
    out: dict[str, Any] = {}
    for opt in options(type(cfg)):
        value: Any = cfg
        for part in opt.path:
            value = getattr(value, part) if value is not None else None
        if value is not None or opt.path[:-1] == ():
            out[opt.key] = list(value) if isinstance(value, tuple) else value
    for field_name, _ in sections(type(cfg)):
        sub = getattr(cfg, field_name)
        out[field_name] = to_dict(sub) if sub is not None else None
    return out


# ---------------------------------------------------------------------------------------------
# The command line


def _help(opt: Option) -> str:
    doc = opt.doc.rstrip(".")
    default = opt.default
    if default is dataclasses.MISSING:
        return f"{doc} (required)" if doc else "(required)"
    if opt.shown is not None:
        shown = opt.shown
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
        shown = ", ".join(map(str, default)) or "none"
    elif default is None:
        shown = "none"
    else:
        shown = str(default)
    return f"{doc} (default: {shown})".replace("%", "%%")


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (), groups: bool = True
) -> None:
    """Flags for every CLI option of `cls`; a flattened section gets its own group.

    Values are parsed as strings and typed by `build` (so a bad value is reported with all the
    others); an absent flag is absent from the namespace, so `from_args` keeps the defaults and
    a YAML value is overridden only by a flag actually given.
    """
    titles = _group_titles(cls) if groups else {}
    made: dict[str, Any] = {}
    for opt in options(cls, cli_only=True):
        if opt.key in skip:
            continue
        title = titles.get(opt.path[:-1])
        target = parser
        if title:
            if title not in made:
                made[title] = parser.add_argument_group(title)
            target = made[title]
        _add_one(target, opt)


def _group_titles(cls: type, here: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    titles = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        sub = _is_section(hints[f.name])
        if sub is not None and f.metadata.get("flatten"):
            key = (*here, f.name)
            titles[key] = f.metadata.get("title") or f.name
            titles.update(_group_titles(sub, key))
    return titles


def add_section_arguments(
    parser: argparse.ArgumentParser, cls: type, *, aliases: dict[str, str] | None = None
) -> None:
    """`--section.key` flags for every option of every section of `cls` (`--lora.r 16`), plus
    its own top-level options; `aliases` adds short flags (`{"trainer.max_steps": "--max-steps"}`).
    The parsed values land under dotted dests (`dotted_given`)."""
    aliases = aliases or {}
    for opt in options(cls, cli_only=True):
        _add_one(parser, opt, extra=aliases.get(opt.key))
    for name, sub in sections(cls):
        group = parser.add_argument_group(f"{name} (the YAML section `{name}:`)")
        for opt in options(sub, cli_only=True):
            dotted = dataclasses.replace(opt, key=f"{name}.{opt.key}", path=(name, *opt.path))
            _add_one(group, dotted, extra=aliases.get(dotted.key))


def dotted_given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options given on the command line, as dotted overrides (`{"lora.r": "16"}`)."""
    keys = [o.key for o in options(cls)]
    keys += [f"{name}.{o.key}" for name, sub in sections(cls) for o in options(sub)]
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}


def _add_one(parser, opt: Option, extra: str | None = None) -> None:
    dest = opt.key
    choices = _choices(opt.type)
    kwargs: dict[str, Any] = {"help": _help(opt), "default": argparse.SUPPRESS}
    if choices:
        kwargs["choices"] = choices
    if opt.metavar:
        kwargs["metavar"] = opt.metavar
    if opt.positional:
        kwargs.pop("default")
        if opt.default is not dataclasses.MISSING:
            kwargs["nargs"] = "?"
            kwargs["default"] = argparse.SUPPRESS
        parser.add_argument(dest, **kwargs)
        return
    flags = [opt.flag, *([extra] if extra else [])]
    base = _strip_optional(opt.type)
    if base is bool:
        parser.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(base) in (list, tuple):
        parser.add_argument(*flags, dest=dest, action="append", **kwargs)
    else:
        parser.add_argument(*flags, dest=dest, **kwargs)


def _strip_optional(tp: Any) -> Any:
    if _is_union(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _choices(tp: Any) -> list[str] | None:
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is Literal:
        return [str(c) for c in typing.get_args(tp)]
    return None


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of `cls` that were given on the command line, as a flat mapping."""
    return {o.key: getattr(args, o.key) for o in options(cls) if hasattr(args, o.key)}


def from_args(
    cls: type, args: argparse.Namespace, *, source: str = "", fixed: dict[str, Any] | None = None
) -> Any:
    """`cls` from parsed flags; problems name the flags."""
    raw = {**given(args, cls), **(fixed or {})}
    return build(cls, raw, source=source, name=lambda o: o.key if o.positional else o.flag)


# ---------------------------------------------------------------------------------------------
# Checks against the world


def validate(*configs: Any, source: str = "config", paths: tuple[str, ...] = ()) -> None:
    """Run every `check_inputs()` of `configs` and their sections; one `ConfigError` for all."""
    problems: list[str] = []
    for i, cfg in enumerate(configs):
        _check(cfg, paths[i] if i < len(paths) else "", problems)
    if problems:
        raise ConfigError(problems, source)


def _check(cfg: Any, path: str, problems: list[str]) -> None:
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sub = path if f.metadata.get("flatten") else _label(path, f.name)
            _check(value, sub, problems)
    check = getattr(cfg, "check_inputs", None)
    if check is not None:
        problems.extend(f"{path}: {p}" if path else p for p in check())
