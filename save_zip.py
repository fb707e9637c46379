"""Validate every dev/final prediction.csv and pack them into MICO's submission zip.

Writes predictions_<track>.zip with entries <track>/<scenario>/<phase>/model_<id>/prediction.csv
as MICO's starting kit did; names every missing or invalid file and writes nothing if any is wrong.
The submission must be whole, as MICO's scorer takes it: all three scenarios, and every dev and
final model of the layout (a synthetic challenge's model counts, else the ids the scenarios share).
Every file must be as the last complete run_lira_mia.py run wrote it (its record,
<data-dir>/<track>/predictions.json), and every file that record lists must still be there: a set
mixed by a run that stopped part-way is refused.
"""

from __future__ import annotations

import os
import sys

from challenges import cli
from challenges.submission import (
    missing_targets,
    not_from_run,
    output_problem,
    read_manifest,
    target_models,
    validate,
    write_zip,
)
from challenges.tracks import load_params


def parse_args(argv=None):
    p = cli.parser(__doc__, scenario=None)
    p.add_argument(
        "--output",
        default=None,
        help="zip path, outside <data-dir>/<track>/ (an existing file there only if a zip); "
        "predictions_<track>.zip when omitted",
    )
    args = p.parse_args(argv)
    args.output = args.output or f"predictions_{args.challenge}.zip"
    why = output_problem(args.output, args.data_dir, args.challenge)
    if why:
        p.error(why)
    return args


def refuse(problems: list[str], what: str, fix: str) -> int:
    """Print each problem and one closing line naming the fix; the exit code (1)."""
    for line in problems:
        print(line, file=sys.stderr)
    print(f"save_zip.py: {len(problems)} {what}; {fix}. Nothing written.", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.output
    params = load_params(args.data_dir, args.challenge)
    problems = validate(args.data_dir, args.challenge, 2 * params.len_challenge)
    missing = missing_targets(args.data_dir, args.challenge, params)
    if missing:
        fix = "bring back what is missing, run run_lira_mia.py over every scenario, then save_zip.py"
        return refuse(missing, "scenario or model folder(s) of the challenge missing", fix)
    if problems:
        fix = f"run run_lira_mia.py --challenge {args.challenge} first"
        return refuse(problems, "invalid or missing prediction file(s)", fix)
    record = read_manifest(args.data_dir, args.challenge)
    track_dir = os.path.join(args.data_dir, args.challenge)
    problems = not_from_run(target_models(args.data_dir, args.challenge), record, track_dir)
    if problems:
        fix = f"run run_lira_mia.py --challenge {args.challenge} over every scenario to the end, then save_zip.py"
        return refuse(problems, "prediction file(s) not from one complete run", fix)
    n = write_zip(args.data_dir, args.challenge, out, comment=f"run_lira_mia.py run {record['run_id']}")
    print(f"wrote {out} ({n} prediction files, all from run {record['run_id']} of {record['finished']})")
    return 0


if __name__ == "__main__":
    cli.run(main, "save_zip.py")
