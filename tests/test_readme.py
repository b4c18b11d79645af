"""The README's options table lists exactly the Config fields, with their CLI flags and defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from asyncwsgi.cli import build_parser
from asyncwsgi.config import Config

README = Path(__file__).resolve().parent.parent / "README.md"


def _table_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\| (.+?) \| `(\w+)` \| (.+?) \| (.+) \|$", line)
        if m:
            rows[m.group(2)] = (m.group(1), m.group(3))
    return rows


def test_every_config_field_has_a_readme_row_and_nothing_else() -> None:
    fields = {f.name for f in dataclasses.fields(Config)}
    assert set(_table_rows()) == fields


def test_readme_flags_and_defaults_match_config() -> None:
    rows = _table_rows()
    for f in dataclasses.fields(Config):
        flags, default = rows[f.name]
        assert f"`--{f.name.replace('_', '-')}`" in flags, f.name
        if f.default is None or f.default == ():
            assert default == "none", f.name
        elif isinstance(f.default, bool):
            assert default == ("on" if f.default else "off"), f.name
        elif f.default == "":
            assert default == "empty", f.name
        else:
            assert default == f"`{f.default}`", f.name


def test_every_config_field_is_a_cli_option() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for f in dataclasses.fields(Config):
        assert f"--{f.name.replace('_', '-')}" in help_text, f.name
