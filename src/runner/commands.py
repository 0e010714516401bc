"""The commands the runner prints for people to copy: folders as they would type them, values quoted
as Hydra's override grammar and then the shell need them. Nothing here imports Hydra or torch."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

# what Hydra reads as a plain value and a shell as one word: anything else is quoted
PLAIN = re.compile(r"[A-Za-z0-9_./+-]+")


def shown(folder: Path | str) -> str:
    """`folder` as people type it: relative to the current directory when below it, else
    absolute."""
    path = Path(folder).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def hydra_quoted(value: str) -> str:
    """`value` as a double-quoted Hydra string that parses back to exactly `value`: a quote and a
    `${` get a backslash (no interpolation), and so do the backslashes before them and at the end
    (Hydra reads those as escapes; every other backslash stays as it is)."""

    def escape(m: re.Match) -> str:
        slashes, what = m.group(1), m.group(2)
        return slashes * 2 + ("\\" + what if what else "")

    return '"' + re.sub(r'(\\*)("|\$\{|$)', escape, value) + '"'


def hydra_override(key: str, value: str) -> str:
    """`key=value` as Hydra reads it back as that value (one command-line argument): as it is when
    it is plain (outputs/2026-01-31/12-00-00_abc123), else with the value Hydra-quoted (a sweep
    job's folder, `0_lr=0.1,wd=0.2`, holds `=` and `,`)."""
    return f"{key}={value}" if PLAIN.fullmatch(value) else f"{key}={hydra_quoted(value)}"


def override(key: str, value: str) -> str:
    """hydra_override as one shell word (quoted for the shell when it is not plain)."""
    text = hydra_override(key, value)
    return text if PLAIN.fullmatch(value) else shlex.quote(text)


def resume_command(folder: Path | str) -> str:
    """The command that continues the run or sweep in `folder`."""
    return f"python -m runner {override('resume', shown(folder))}"
