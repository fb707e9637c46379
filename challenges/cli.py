"""Command-line conventions shared by the five scripts.

- Every long option is accepted with underscores or hyphens (``--global_variance`` and
  ``--global-variance``, ``--min-shadows`` and ``--min_shadows``); ``--help`` shows the spelling
  the option was declared with, and its note on spellings names an option every script has.
- Defaults are shown in ``--help`` (where there is one).
- ``--challenge`` / ``--data-dir`` / ``--scenario`` mean the same everywhere, and a scenario name is
  checked in one place (:func:`challenges.tracks.check_scenario`).
- Numbers that must be positive (``--batch-size``, ``--epochs``) or non-negative (``--seed``) are
  checked by their argparse type (:func:`positive_int`, :func:`non_negative_int`), so a bad value is
  a usage error naming the flag; ``--threads`` (:func:`add_threads`) is the same on every script
  that runs torch.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from tqdm.auto import tqdm

from .fileio import LockWarning, one_line, os_error_line
from .layout import LayoutWarning
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
    note = "Long options take '_' or '-' alike (--data-dir = --data_dir)."
    kwargs["epilog"] = f"{kwargs['epilog']} {note}" if kwargs.get("epilog") else note
    p = Parser(description=description, **kwargs)
    p.add_argument("--challenge", required=True, choices=sorted(TRACKS), help="MICO track")
    p.add_argument("--data-dir", default="data", help="root of the challenge trees")
    if scenario is not None:
        p.add_argument("--scenario", default=None, help=scenario)
    return p


def _number(kind, text: str, ok, expected: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in the error)."""
    return _number(int, text, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds, ids)."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates)."""
    return _number(float, text, lambda v: 0 < v < float("inf"), "a number > 0")


def add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads per process (see docs/flags_threads.md)."""
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads torch uses in this process (default: torch's choice, one per core); "
        "lower it on a machine shared with other jobs",
    )


def refuse_unused(p: argparse.ArgumentParser, given: dict, why: str) -> None:
    """A usage error naming the flags in ``given`` (flag -> value, None when not given) that were set,
    where ``why`` says that they do nothing, e.g. '--design mico does not use'."""
    extra = [flag for flag, value in given.items() if value is not None and value is not False]
    if extra:
        p.error(f"{why} {', '.join(extra)}; drop {'it' if len(extra) == 1 else 'them'}")


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
    """Run a script's ``main()`` and exit with its code; an expected failure (ValueError, OSError, or
    an ImportError of a package only some runs need, such as opacus for DP training) becomes one line
    on stderr naming the script, as does a :class:`LayoutWarning` or
    :class:`~challenges.fileio.LockWarning`, and Ctrl-C says how to resume."""
    show = warnings.showwarning

    def one_line_warning(message, category, *args, **kwargs):
        if issubclass(category, (LayoutWarning, LockWarning)):
            tqdm.write(f"{name}: warning: {one_line(message, None)}", file=sys.stderr)  # above any progress bar
        else:
            show(message, category, *args, **kwargs)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            code = main()
    except KeyboardInterrupt:
        sys.exit(f"{name}: interrupted; rerun the same command to resume")
    except OSError as e:  # a read-only or not-a-folder path, a full disk: named, with the fix
        sys.exit(f"{name}: {os_error_line(e)}")
    except (ValueError, ImportError) as e:
        sys.exit(f"{name}: {one_line(e, None)}")
    sys.exit(code)
