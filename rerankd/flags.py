"""argparse flags made from settings (:func:`rerankd.config.options`): ``rerankd serve`` and the
``rerankd keys`` commands declare each setting's flag, type, env name and default through here."""

from __future__ import annotations

import argparse
from typing import Any

from rerankd.config import Option, options

__all__ = ["HelpFormatter", "add_option", "env_help", "option"]


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each line of an option's help apart, so that its env variable and default start a line."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        split = super()._split_lines
        return [line for part in text.splitlines() for line in split(part, width)]


def env_help(text: str, env: str, default: str) -> str:
    return f"{text}\n(env {env}; default: {default})".replace("%", "%%")


def add_option(group: Any, opt: Option, *, flag: str | None = None, help: str | None = None) -> None:
    """One setting's flag. Its default is None: only flags given override env and file."""
    env = ", ".join((*opt.env_aliases, opt.env))
    kwargs: dict[str, Any] = {"dest": opt.field, "help": help or env_help(opt.help, env, opt.shown_default)}
    if opt.item is bool:
        kwargs.update(
            {"action": argparse.BooleanOptionalAction}
            if opt.spec.negatable
            else {"action": "store_const", "const": True}
        )
    else:
        kwargs.update(
            action="append" if opt.spec.repeat else "store",
            type=None if opt.item is str else opt.item,
            choices=opt.choices,
            metavar=opt.spec.metavar or ("N" if opt.item in (int, float) else None),
        )
    group.add_argument(flag or opt.flag, **kwargs)
    if opt.spec.shorthand:
        short, value = opt.spec.shorthand
        group.add_argument(
            short, dest=opt.field, action="store_const", const=value, help=f"same as {opt.flag} {value}"
        )


def option(field: str) -> Option:
    """The flag of one setting."""
    for opt in options():
        if opt.field == field:
            return opt
    raise KeyError(field)
