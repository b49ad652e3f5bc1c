"""The config-group listing of ``python run.py --help``.

``conf/hydra/help/quantexp.yaml`` puts ``${quantexp.config_groups:}`` in its
template; ``register_resolvers`` makes that resolver list every folder of
``conf/`` except ``hydra/`` (Hydra's own listing, ``$APP_CONFIG_GROUPS``, also
shows the ``schema/*`` groups of the ConfigStore, which no user picks), each
option with a one-line description: the summary line of its yaml's leading
comment block. That first comment line is the summary (``# @package`` lines are
skipped); a first line that plainly continues on the next one is joined with it,
cut at the end of the first sentence and shortened to ``SUMMARY_WIDTH``.

Reads text files only (no torch, no yaml parsing beyond ``conf/config.yaml``):
``--help`` must stay as fast as Hydra itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from quantexp.api import CONF_DIR
from quantexp.config.registry import GROUPS

SUMMARY_WIDTH = 90
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`])")
_BROKEN_OFF = re.compile(r"(?:[,(/-]|->|\band|\bor|\bthe|\ba)$")


def header_lines(path: Path) -> list[str]:
    """The leading ``#`` comment lines of a yaml file, without ``#`` and directives."""
    lines = []
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            if not raw.startswith("#"):
                break
            text = raw[1:].rstrip()
            if text.strip().startswith("@package"):
                continue
            lines.append(text)
    return lines


def summary(path: Path, width: int = SUMMARY_WIDTH) -> str:
    """One line describing the option in ``path`` ("" when its yaml has no header)."""
    lines = header_lines(path)
    if not lines:
        return ""
    text = lines[0].strip()
    for nxt in lines[1:]:
        # Joined only when the first line visibly breaks off mid-phrase: an indented
        # example or a new capitalised sentence below it stays out of the summary.
        if nxt.startswith("  ") or not nxt.strip():
            break
        if text.endswith((".", "!", "?")) or not (_BROKEN_OFF.search(text) or nxt.strip()[:1].islower()):
            break
        text = f"{text} {nxt.strip()}"
    text = _SENTENCE_END.split(text, maxsplit=1)[0]
    if len(text) > width:
        text = text[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text


def _defaults(conf_dir: Path) -> dict[str, str]:
    """{group: option} the primary config selects (``conf/config.yaml`` defaults list)."""
    import yaml

    data = yaml.safe_load((conf_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    out = {}
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                if isinstance(key, str) and not key.startswith("override ") and isinstance(value, str):
                    out[key.lstrip("/")] = value
    return out


def groups(conf_dir: Path = CONF_DIR) -> dict[str, dict[str, str]]:
    """{group: {option: summary}} of every user-facing group under ``conf_dir``
    (nested folders as ``a/b``), the five experiment groups first."""
    found: dict[str, dict[str, str]] = {}
    for directory in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        group = directory.relative_to(conf_dir).as_posix()
        if group == "hydra" or group.startswith("hydra/"):
            continue
        options = {p.stem: summary(p) for p in sorted(directory.glob("*.yaml"))}
        if options:
            found[group] = options
    order = [g for g in GROUPS if g in found] + [g for g in found if g not in GROUPS]
    return {g: found[g] for g in order}


def format_groups(conf_dir: Path = CONF_DIR) -> str:
    """The text of ``${quantexp.config_groups:}``."""
    defaults = _defaults(conf_dir)
    listing = groups(conf_dir)
    picked = [g for g in listing if g in defaults]
    optional = [g for g in listing if g not in defaults]
    out = ["Pick one option per group with GROUP=OPTION (* marks the default)."]

    def block(group: str) -> None:
        options = listing[group]
        out.extend(["", f"{group}: {', '.join(options)}"])
        width = max(len(name) for name in options)
        for name, text in options.items():
            mark = "*" if defaults.get(group) == name else " "
            out.append(f"  {mark} {name:<{width}}  {text}".rstrip())

    for group in picked:
        block(group)
    if optional:
        out += ["", "Optional groups, added with +GROUP=OPTION (none is used unless you add it):"]
        for group in optional:
            block(group)
    # Hydra fills the template with string.Template after OmegaConf resolved it: a
    # literal $ must not start a placeholder.
    return "\n".join(out).replace("$", "$$") + "\n"


def register_resolvers() -> None:
    """``${quantexp.config_groups:}`` for the help template (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("quantexp.config_groups"):
        OmegaConf.register_resolver("quantexp.config_groups", _config_groups, annotation_validation="off")


def _config_groups() -> str:
    return format_groups()


__all__ = ["format_groups", "groups", "header_lines", "register_resolvers", "summary"]
