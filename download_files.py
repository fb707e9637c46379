#!/usr/bin/env python
"""Fetch a MICO challenge (models and seeds) and its base dataset into <data-dir>/<track>/.

By default the challenge comes from the public Hugging Face mirror; --url takes an original
competition archive instead; --synthetic builds a small offline challenge, and --synthetic
--preset mico one in the real challenge's regime (docs/faithful_challenge.md), then prints the MICO
winner's TPR@10%FPR on its dev and final models. Rerunning skips what is already in place. See
challenges/download.py for the guarantees.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import save_preds
from attacks.options import AttackOptions
from attacks.suite import make_attack
from challenges import cli, download, layout, scoring
from challenges.fileio import one_line, os_error_line
from challenges.scenario import load_scenario, target_truth
from challenges.tracks import load_params, scenario_names, scenario_suffix, secret_warning
from models import resolve_device, set_threads
from production.synthetic import PRESET_RANGES, PRESETS, build_synthetic

SYNTHETIC_OPTIONS = ("n_points", "len_training", "n_train", "n_dev", "n_final", "seed", "device")


def build_parser() -> cli.Parser:
    mirrors = ", ".join(f"{t}: {r}" for t, r in download.HF_REPOS.items())
    p = cli.parser(
        "Download a MICO challenge and its base dataset into <data-dir>/<challenge>/; rerunning "
        "skips what is in place.",
        epilog=f"Hugging Face mirrors ({mirrors}). Offline: --synthetic.",
        scenario="fetch only this scenario (e.g. cifar10_hi) instead of all three",
    )
    src = p.add_argument_group("challenge source")
    src.add_argument(
        "--url",
        help="competition archive URL (cifar10.zip / purchase100.zip) instead of the "
        "Hugging Face mirror; 'original' for the competition's own URL",
    )
    src.add_argument("--md5", help="expected md5 of the --url archive (built in for cifar10.zip, purchase100.zip)")
    src.add_argument("--hub-repo", help="Hugging Face dataset repo instead of the track's MICO mirror")
    src.add_argument("--revision", help="branch, tag or commit of the Hugging Face repo")
    ds = p.add_argument_group("base dataset")
    ds.add_argument("--no-dataset", action="store_true", help="do not fetch the base dataset")
    ds.add_argument("--dataset-url", help="base dataset archive URL instead of the track's public source")
    ds.add_argument("--dataset-md5", help="expected md5 of the base dataset archive")
    p.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extraction")
    syn = p.add_argument_group(
        "synthetic challenge (offline)", "options left at None take the synthetic builder's defaults"
    )
    syn.add_argument(
        "--synthetic", action="store_true", help="build an offline synthetic challenge instead of downloading"
    )
    syn.add_argument("--n-points", type=cli.positive_int, help="synthetic: size of the base dataset")
    syn.add_argument(
        "--len-training",
        type=cli.positive_int,
        help="synthetic: training-set size per model; half of --n-points when omitted",
    )
    syn.add_argument(
        "--n-train",
        type=cli.positive_int,
        help="synthetic: number of models in train (the attacks' shadows; scoring them leave-one-out needs 2)",
    )
    syn.add_argument("--n-dev", type=cli.positive_int, help="synthetic: number of models in dev")
    syn.add_argument("--n-final", type=cli.positive_int, help="synthetic: number of models in final")
    syn.add_argument("--seed", type=cli.non_negative_int, help="synthetic: random seed")
    syn.add_argument("--device", help="synthetic: torch device for training, e.g. cpu or cuda")
    syn.add_argument("--epochs", type=cli.positive_int, help="synthetic: override the number of training epochs")
    cli.add_threads(syn)
    syn.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="synthetic: sizes, generator and recipe of the real challenge's regime "
        "(docs/faithful_challenge.md); then prints the MICO winner's TPR@10%%FPR on dev+final",
    )
    syn.add_argument(
        "--cache-dir", default="cache", help="synthetic --preset: signal cache for the printed attack figures"
    )
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.md5 and not args.url:
        parser.error("--md5 needs --url")
    if args.url and (args.hub_repo or args.revision):
        parser.error("--hub-repo and --revision select the Hugging Face source; drop them with --url")
    if args.synthetic:
        ignored = [
            f
            for f, v in (
                ("--url", args.url),
                ("--hub-repo", args.hub_repo),
                ("--revision", args.revision),
                ("--no-dataset", args.no_dataset),
                ("--dataset-url", args.dataset_url),
                ("--dataset-md5", args.dataset_md5),
                ("--keep-archives", args.keep_archives),
            )
            if v
        ]
        if ignored:
            parser.error(f"--synthetic builds everything locally; drop {', '.join(ignored)}")
        if args.device is not None:  # before anything is written
            try:
                resolve_device(args.device)
            except ValueError as e:
                parser.error(f"--device: {e}")
    else:
        given = [o for o in SYNTHETIC_OPTIONS + ("epochs", "threads", "preset") if getattr(args, o) is not None]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} only applies with --synthetic")
    return args


def fetch(args) -> None:
    """The challenge (hub mirror or archive), then the base dataset."""
    scenarios = [args.scenario] if args.scenario else None
    download.check_not_synthetic(args.data_dir, args.challenge)
    with download.removing_if_empty(download.track_dir(args.data_dir, args.challenge)):
        if args.url:
            download.fetch_challenge_archive(
                args.data_dir, args.challenge, args.url, args.md5, scenarios, keep_archive=args.keep_archives
            )
        else:
            download.fetch_challenge_hub(
                args.data_dir, args.challenge, scenarios, repo_id=args.hub_repo, revision=args.revision
            )
        if not args.no_dataset:
            download.fetch_dataset(
                args.data_dir, args.challenge, args.dataset_url, args.dataset_md5, keep_archive=args.keep_archives
            )


def print_difficulty(data_dir: str, cache_dir: str, track: str, scenarios) -> None:
    """The preset's figures: the MICO winner as submitted on dev and final against the synthetic ground
    truth (TPR@10%FPR of each phase on its own, as MICO scored them, then their mean, with its
    bootstrap standard error over targets resampled within each phase) and the models' held-out
    accuracy, next to the real challenge's range (PRESET_RANGES)."""
    params = load_params(data_dir, track)
    for scenario in scenarios:
        save_preds.main(
            ["--challenge", track, "--data-dir", data_dir, "--cache-dir", cache_dir, "--scenario", scenario]
        )
        data = load_scenario(data_dir, cache_dir, track, scenario, params, params.n_points, ("phi", "mentr"))
        rows = np.concatenate([data.phase_rows("dev"), data.phase_rows("final")])
        scores = make_attack(AttackOptions(attack="mico-winner"))(data, rows, np.full(len(rows), -1))
        phases = [data.models[r].phase for r in rows]
        m = scoring.phase_mean(target_truth(data, rows), scores, phases, n_boot=200)  # each phase on its own
        tpr, se = m[scoring.RANKING_KEY], m[scoring.RANKING_KEY + scoring.SE_SUFFIX]
        lo, hi = PRESET_RANGES[scenario_suffix(scenario)]
        accs = [
            float(open(os.path.join(md.path, "accuracy")).read()) for md in layout.models(data_dir, track, scenario)
        ]
        verdict = "in" if lo <= tpr <= hi else "OUTSIDE"
        print(
            f"{scenario}: MICO winner as submitted, dev and final ({len(rows)} targets; each phase scored on its "
            f"own, then their mean): TPR@10%FPR {tpr:.3f} "
            f"± {se:.3f} ({verdict} the real challenge's [{lo:.2f}, {hi:.2f}]); held-out accuracy "
            f"{np.mean(accs):.3f} (mean of {len(accs)} models, min {min(accs):.3f}, max {max(accs):.3f})",
            flush=True,
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.synthetic:
            set_threads(args.threads)
            options = {o: getattr(args, o) for o in SYNTHETIC_OPTIONS if getattr(args, o) is not None}
            scenarios = [args.scenario] if args.scenario else None
            params = build_synthetic(
                args.data_dir, args.challenge, epochs=args.epochs, scenarios=scenarios, preset=args.preset, **options
            )
            if args.preset:
                print_difficulty(
                    args.data_dir, args.cache_dir, args.challenge, scenarios or scenario_names(args.challenge)
                )
            warning = secret_warning(args.data_dir, args.challenge, params)
            if warning:  # last, where it is seen
                print(f"download_files.py: warning: {warning}", file=sys.stderr)
        else:
            fetch(args)
    # ValueError: synthetic sizes or another challenge in place; ImportError: DP training without opacus
    except (download.DownloadError, ValueError, ImportError) as e:
        print(f"download_files.py: error: {one_line(e, None)}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions: the user's to fix, no traceback
        print(f"download_files.py: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("download_files.py: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
