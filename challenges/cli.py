"""Command-line conventions shared by the five scripts.

- Every long option is accepted with underscores or hyphens (``--global_variance`` and
  ``--global-variance``, ``--min-shadows`` and ``--min_shadows``); ``--help`` shows the spelling
  the option was declared with.
- Defaults are shown in ``--help`` (where there is one).
- ``--challenge`` / ``--data-dir`` / ``--scenario`` mean the same everywhere, and a scenario name is
  checked in one place (:func:`challenges.tracks.check_scenario`).
"""

from __future__ import annotations

import argparse
import sys

from .fileio import one_line
from .tracks import TRACKS, check_scenario


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show (not None, not an off switch)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _spelling(option: str) -> str:
    return option.replace("_", "-")


class Parser(argparse.ArgumentParser):
    """ArgumentParser that accepts both spellings of every long option and validates --scenario."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def _canonical(self) -> dict:
        return {_spelling(o): o for a in self._actions for o in a.option_strings if o.startswith("--")}

    def parse_known_args(self, args=None, namespace=None):
        canonical = self._canonical()
        argv = list(sys.argv[1:] if args is None else args)
        out = []
        for i, tok in enumerate(argv):
            if tok == "--":  # everything after it is positional
                out.extend(argv[i:])
                break
            name, eq, value = tok.partition("=")
            if name.startswith("--") and _spelling(name) in canonical:
                tok = canonical[_spelling(name)] + eq + value
            out.append(tok)
        args = out
        ns, rest = super().parse_known_args(args, namespace)
        scenario = getattr(ns, "scenario", None)
        if scenario is not None and getattr(ns, "challenge", None) is not None:
            try:
                check_scenario(ns.challenge, scenario)
            except ValueError as e:
                self.error(f"--scenario: {e}")
        return ns, rest


def parser(
    description: str, *, scenario: str | None = "one scenario only, e.g. cifar10_hi; all when omitted", **kwargs
) -> Parser:
    """A :class:`Parser` with the common ``--challenge`` and ``--data-dir`` (and ``--scenario``)."""
    note = "Long options take '_' or '-' alike (--global_variance = --global-variance)."
    kwargs["epilog"] = f"{kwargs['epilog']} {note}" if kwargs.get("epilog") else note
    p = Parser(description=description, **kwargs)
    p.add_argument("--challenge", required=True, choices=sorted(TRACKS), help="MICO track")
    p.add_argument("--data-dir", default="data", help="root of the challenge trees")
    if scenario is not None:
        p.add_argument("--scenario", default=None, help=scenario)
    return p


def parse_shard(text: str) -> tuple[int, int]:
    """argparse type of ``--shard i/n`` (train_shadows.py, save_preds.py): this run does the items
    with index % n == i (SLURM: ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def run(main, name: str) -> None:
    """Run a script's ``main()`` and exit with its code; an expected failure (ValueError, OSError)
    becomes one line on stderr naming the script, and Ctrl-C says how to resume."""
    try:
        code = main()
    except KeyboardInterrupt:
        sys.exit(f"{name}: interrupted; rerun the same command to resume")
    except (ValueError, OSError) as e:
        sys.exit(f"{name}: {one_line(e, None)}")
    sys.exit(code)
