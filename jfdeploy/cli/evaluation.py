"""``jfdeploy eval`` (segment a VOS dataset, write its layout, score it) and ``jfdeploy compare`` (J&F of two
folders of masks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jfdeploy import fsutil
from jfdeploy.cli.common import (
    WORKER_OPTIONS,
    announce,
    inference_arguments,
    load_model,
    model_arguments,
    precision_note,
    refuse_given,
    run_on_workers,
    run_options,
    worker_arguments,
)
from jfdeploy.errors import DifferenceError, InputError

DATASETS = ["davis2016", "davis2017", "youtubevos2018", "youtubevos2019", "generic"]
WORKERS_SUMMARY = "workers.json"  # the pool's report (run-many's summary.json), beside the scores' summary.json


def add_eval_parser(sub) -> None:
    evaluate = sub.add_parser(
        "eval",
        help="segment a VOS dataset, write its mask layout and score it (J&F)",
        description="Run a backend over DAVIS 2016/2017 or YouTube-VOS 2018/2019 (or a generic folder), write "
        "the masks in the benchmark's layout, and, where ground truth is available (DAVIS), write per-sequence "
        "J/F/J&F to per_sequence.csv and summary.json. Resumable: sequences already written completely are "
        "skipped. With --workers N or --ray the sequences are segmented on a pool of workers (as run-many's; their "
        "report goes to OUT/workers.json) and scored here afterwards.",
    )
    evaluate.add_argument("--dataset", required=True, choices=DATASETS)
    evaluate.add_argument(
        "--root", type=Path, required=True,
        help="dataset root (generic: a folder of frames; give the first mask with --mask)",
    )  # fmt: skip
    evaluate.add_argument(
        "--split", default=None, help="val / valid / test-dev (default: the dataset's validation split)"
    )
    evaluate.add_argument("--mask", type=Path, default=None, help="generic: the first frame's mask")
    evaluate.add_argument("--out", type=Path, required=True, help="output folder")
    evaluate.add_argument("--sequences", default=None, help="only these sequences (comma list)")
    evaluate.add_argument("--engines", type=Path, default=None, help="engine directory (onnxruntime / tensorrt)")
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="segment every sequence again, replacing its masks (default: resume, skipping complete sequences)",
    )
    evaluate.add_argument("--flip", action="store_true", help="test-time augmentation: also horizontally flipped")
    worker_arguments(evaluate, "sequence", without="none, the sequences run in this process")
    model_arguments(evaluate)
    inference_arguments(evaluate, default_size=480, many_sizes="averages test-time scales, e.g. 480,600",
                        size_alias="--scales")  # fmt: skip
    evaluate.set_defaults(handler=cmd_eval)


def add_compare_parser(sub) -> None:
    compare = sub.add_parser(
        "compare",
        help="J&F of a folder of masks against another (two run outputs, or the DAVIS layout)",
        description="J&F (as the DAVIS benchmark computes it) of PRED against GT: two folders of palette PNGs "
        "with matching names (e.g. two `jfdeploy run` outputs), or two folders with one sub-folder of PNGs per "
        "sequence (DAVIS layout). GT may be real ground truth, or fp32 eager masks when judging an fp16 engine.",
    )
    compare.add_argument("pred", type=Path)
    compare.add_argument("gt", type=Path)
    compare.add_argument("--json", type=Path, default=None, help="write the scores as JSON")
    compare.add_argument(
        "--youtube-meta", type=Path, default=None,
        help="YouTube-VOS layout: the split's meta.json (objects, categories, scored frames)",
    )  # fmt: skip
    compare.add_argument(
        "--seen-categories", type=Path, default=None,
        help="with --youtube-meta: training categories (text file or train meta.json) for the seen / unseen split",
    )  # fmt: skip
    compare.set_defaults(handler=cmd_compare)


def _sequences(args: argparse.Namespace) -> tuple[list, str]:
    from jfdeploy import datasets

    if args.dataset == "generic":
        if args.mask is None:
            raise InputError("--dataset generic needs --mask FIRST_MASK")
        return [datasets.generic(args.root, args.mask)], "davis"
    if args.dataset.startswith("davis"):
        year = int(args.dataset[-4:])
        return datasets.davis(args.root, year=year, split=args.split or "val"), "davis"
    return datasets.youtube_vos(args.root, split=args.split or "valid"), "youtube"


def cmd_eval(args: argparse.Namespace) -> None:
    import dataclasses

    from jfdeploy.evaluate import write_scores
    from jfdeploy.scoring import compare_folders

    on_workers = args.workers is not None or args.ray is not None
    if not on_workers:
        refuse_given(args, WORKER_OPTIONS, "without --workers or --ray (sequences are segmented in this process)")
    options, device = run_options(args, sizes=tuple(args.size))
    options = dataclasses.replace(options, flip=args.flip)
    if args.dataset != "generic" and args.mask is not None:
        raise InputError("--mask applies to --dataset generic only (datasets bring their annotations)")
    if args.dataset == "generic" and args.split is not None:
        raise InputError("--split does not apply to --dataset generic")
    sequences, layout = _sequences(args)
    if args.sequences:
        wanted = set(args.sequences.split(","))
        unknown = sorted(wanted - {s.name for s in sequences})
        if unknown:
            raise InputError(f"--sequences: unknown sequences {unknown}")
        sequences = [s for s in sequences if s.name in wanted]
    masks_root = args.out if layout == "youtube" else args.out / "masks"  # youtube: out/Annotations/<vid>
    if on_workers:
        from jfdeploy.batch import jobs_from_sequences

        run_on_workers(args, jobs_from_sequences(sequences), masks_root, options, device,
                       summary_path=args.out / WORKERS_SUMMARY, failure_note="; no scores written")  # fmt: skip
    else:
        _evaluate_here(args, sequences, masks_root, options, device)
    if layout == "davis" and args.dataset != "generic":
        gt_root = args.root / "Annotations" / "480p"
        summary = compare_folders(masks_root, gt_root, [s.name for s in sequences], binary=args.dataset == "davis2016")
        write_scores(summary, args.out)
        print(f"J&F {summary['J&F']:.4f}  J {summary['J']:.4f}  F {summary['F']:.4f} -> {args.out / 'summary.json'}")


def _evaluate_here(args: argparse.Namespace, sequences: list, masks_root: Path, options, device) -> None:
    """Segment the sequences in this process (``evaluate_dataset``); DifferenceError if any failed."""
    from jfdeploy.evaluate import evaluate_dataset
    from jfdeploy.predictor import VideoPredictor

    model = None if options.engines is not None else load_model(args, device)
    predictor = VideoPredictor(model, options)
    announce(args, options.backend, device, precision_note(options, device))
    computed, failed = evaluate_dataset(
        predictor, sequences, masks_root, progress=not args.quiet, overwrite=args.overwrite
    )
    skipped = len(sequences) - len(computed) - len(failed)
    print(f"{len(computed)} sequence(s) segmented, {skipped} already complete -> {masks_root}")
    if failed:
        raise DifferenceError(f"{len(failed)} of {len(sequences)} sequences failed (first: "
                              f"{next(iter(failed))}: {next(iter(failed.values()))}); no scores written")  # fmt: skip


def cmd_compare(args: argparse.Namespace) -> None:
    from jfdeploy.scoring import compare_folders, compare_youtube, read_categories

    if args.seen_categories is not None and args.youtube_meta is None:
        raise InputError("--seen-categories applies with --youtube-meta only")
    if args.youtube_meta is not None:
        seen = read_categories(args.seen_categories) if args.seen_categories else set()
        scores = compare_youtube(args.pred, args.gt, args.youtube_meta, seen)
        groups = {k: v for k, v in scores.items() if k != "objects"}
        print("  ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in groups.items()))
        if args.json:
            fsutil.write_text_atomic(args.json, json.dumps(scores, indent=2) + "\n")
        return
    summary = compare_folders(args.pred, args.gt)
    print("| sequence | J | F | J&F |\n| --- | --- | --- | --- |")
    for name, scores in sorted(summary["sequences"].items()):
        print(f"| {name} | {scores['J']:.4f} | {scores['F']:.4f} | {(scores['J'] + scores['F']) / 2:.4f} |")
    print(f"J&F {summary['J&F']:.4f}  J {summary['J']:.4f}  F {summary['F']:.4f}")
    if args.json:
        fsutil.write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
