"""Typed configs whose fields are the script's flags.

``parse_config(Cls, argv)`` builds an argparse parser from a dataclass: one flag per field
(``snake_case`` -> ``--kebab-case``), help from the field's ``metadata["help"]``. Values come from,
in increasing priority: the dataclass defaults, a named preset, ``--config FILE`` (JSON), then the
flags actually typed. Unknown keys in a config file fail, so a typo never goes unnoticed.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import shlex
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from landslide.errors import ConfigError

T = TypeVar("T")


def field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (and a factory for mutable defaults)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} may not be null")
    origin = typing.get_origin(base)
    try:
        if origin is list:
            (inner,) = typing.get_args(base)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise TypeError(value)
            return [_scalar(inner, v) for v in value]
        return _scalar(base, value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a valid {getattr(base, '__name__', base)}",
                          fix=f"pass --{name.replace('_', '-')} with a value of that type") from None


def _scalar(tp: type, value: Any) -> Any:
    """``value`` as ``tp``, refusing what a plain ``tp(value)`` would quietly bend (from a JSON config, say):
    ``int(2.5)`` is 2, ``float(True)`` is 1.0, ``bool(5)`` and ``bool("off")`` are True, ``str([1])`` is "[1]"."""
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise TypeError(value)
    if isinstance(value, bool) or isinstance(value, (list, tuple, dict)):
        raise TypeError(value)
    if tp is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return tp(value)


def _shown_default(help_: str, default: Any) -> str:
    """The help's default, as the flag is typed (``a,b`` for a list); nothing when the help already says
    it or there is none to show (an empty string or list)."""
    if "default" in help_ or default in ("", []):
        return ""
    return f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"


def _prog() -> str | None:
    """``python -m bench.infer`` for a module run with ``-m`` (argparse would say ``infer.py``, which is
    another script); None (argparse's own: the script's name) otherwise."""
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or spec.name in ("", "__main__"):
        return None
    return f"python -m {spec.name.removesuffix('.__main__')}"  # a package run with -m runs its __main__


def as_flag(name: str, value: Any) -> str:
    """A field's value as it is typed: ``--epochs 8``, ``--archs a,b``, ``--resume`` / ``--no-resume``."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {shlex.quote(','.join(map(str, value)) if isinstance(value, list) else str(value))}"


def _presets_epilog(presets: dict[str, dict] | None) -> str | None:
    """What each preset sets, under --help: the flags' defaults above are the dataclass's, before any preset."""
    if not presets:
        return None
    import textwrap

    lines = ["presets (--preset NAME is these flags; --config and the flags typed override them):"]
    for name, values in presets.items():
        shown = " ".join(as_flag(k, v) for k, v in values.items())
        lines.append(textwrap.fill(shown, width=100, initial_indent=f"  {name}: ", subsequent_indent="    ",
                                   break_on_hyphens=False))
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse with a short error: the message, the flag a mistyped one was probably meant to be, and a
    pointer to --help (a script's full usage is dozens of lines, burying the one that matters)."""

    def error(self, message: str) -> typing.NoReturn:
        hints = []
        if message.startswith("unrecognized arguments: "):
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            for tok in message.removeprefix("unrecognized arguments: ").split():
                name = tok.split("=")[0]
                # A flag it abbreviates first (`--bat` is --batch-size, not the closer-spelled --data).
                prefixed = [f for f in flags if f.startswith(name)] if len(name) > 3 else []
                close = prefixed[:1] if len(prefixed) == 1 else difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
                if name.startswith("--") and close:
                    hints.append(f"  {name}: did you mean {close[0]}? (flags are never abbreviated)")
        self.exit(2, "\n".join([f"{self.prog}: error: {message}", *hints, f"  all flags: {self.prog} --help", ""]))


def build_parser(cls: type, description: str, presets: dict[str, dict] | None = None,
                 positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    # Raw description: the scripts' docstrings are usage examples, one per line. No abbreviations:
    # `--epoch 2` must fail like any unknown key instead of quietly meaning --epochs.
    p = _Parser(prog=_prog(), description=description, epilog=_presets_epilog(presets),
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    hints = typing.get_type_hints(cls)
    if presets:
        p.add_argument("--preset", choices=sorted(presets), default=None,
                       help="named recipe; explicit flags and --config override it")
    p.add_argument("--config", default=None, help="JSON file of field values (flags override it)")
    for f in dataclasses.fields(cls):
        if f.name == "preset":  # recorded from --preset above, not a flag of its own
            continue
        help_ = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in positional:
            p.add_argument(f.name, nargs="?", default=argparse.SUPPRESS, help=help_)
            continue
        flag = "--" + f.name.replace("_", "-")
        base, _ = _base_type(hints[f.name])
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name, "help": help_ + _shown_default(help_, default)}
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            if typing.get_origin(base) is list:
                kw["metavar"] = "A,B,..."
            p.add_argument(flag, choices=choices, **kw)
    return p


def parse_config(cls: type[T], argv: list[str] | None, description: str,
                 presets: dict[str, dict] | None = None, positional: tuple[str, ...] = (),
                 base: dict[str, Any] | None = None) -> T:
    """Parse ``argv`` into an instance of the dataclass ``cls`` (see module docstring). ``base`` takes
    the defaults' place (``train.py --resume``: the run's saved config, so only changes need typing)."""
    parser = build_parser(cls, description, presets, positional)
    ns = vars(parser.parse_args(argv))
    preset = ns.pop("preset", None)
    config_file = ns.pop("config", None)
    values: dict[str, Any] = dict(base or {})
    if preset:
        values.update(presets[preset])  # type: ignore[index]
        values["preset"] = preset
    if config_file:
        values.update(load_json_config(cls, config_file))
    values.update(ns)
    return make_config(cls, values)


def load_json_config(cls: type, path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config: {e}", file=path, fix="pass a JSON object of field values") from None
    if not isinstance(data, dict):
        raise ConfigError("config is not a JSON object", file=path, fix="write {\"field\": value, ...}")
    check_keys(cls, data, file=path)  # here, with the file named, rather than later as if a flag were wrong
    hints = typing.get_type_hints(cls)
    for key, value in data.items():  # likewise each value's type, naming the key in the file
        try:
            _coerce(key, hints[key], value)
        except ConfigError as e:
            base = _base_type(hints[key])[0]
            kind = "list" if typing.get_origin(base) is list else getattr(base, "__name__", base)
            a = "an" if kind[0] in "aeiou" else "a"
            eg = _example(cls, key)
            raise ConfigError(f"{e.problem} (key {key!r})", file=path, fix=f'write "{key}": {a} {kind} value'
                              + (f", e.g. {json.dumps(eg)}" if eg not in ("", []) else "")) from None
    return data


def _example(cls: type, key: str) -> Any:
    """The field's default: an example of its type as JSON writes it."""
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


def check_keys(cls: type, values: dict[str, Any], file: str | Path | None = None) -> None:
    """Refuse keys that are not fields of ``cls``, listing the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}", file=file, fix=f"valid keys: {', '.join(sorted(names))}")


def make_config(cls: type[T], values: dict[str, Any]) -> T:
    """Build ``cls`` from a dict, coercing types and refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    check_keys(cls, values)
    kwargs = {k: _coerce(k, hints[k], v) for k, v in values.items()}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        choices = f.metadata.get("choices")
        if choices and f.name in kwargs and kwargs[f.name] not in choices:
            raise ConfigError(f"{f.name}={kwargs[f.name]!r} is not one of {list(choices)}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
