"""`mmray prepare | train | tune | compare | bench`. Bad input ends with one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import errno
import sys
import tempfile
from pathlib import Path

from mmray.data.prepare import add_arguments as prepare_arguments
from mmray.errors import UserError


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="a file in search_spaces/ (gmm.yaml or gmm) or a path")
    p.add_argument("--num-samples", type=int, help="number of trials")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--epochs", type=int, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--dataset", help="dataset name (synthetic-av, ...)")
    p.add_argument("--data-dir", help="a prepared dataset folder")
    p.add_argument("--storage", default="~/mmray_results",
                   help="folder holding experiments, or a URI: s3://bucket/prefix, gs://... (default: %(default)s)")
    p.add_argument("--workdir", default="~/mmray_results",
                   help="with a URI --storage: local folder for the study, summaries and selected checkpoint, "
                        "copied to the bucket at the end (default: %(default)s)")
    p.add_argument("--name", help="experiment name (default: the space's name and the time, e.g. gmm-20261203-104512; "
                   "with --resume, the latest such experiment in --storage)")
    p.add_argument("--seed", type=int, help="seed of the sampler and of every trial")
    p.add_argument("--confirm-top-k", type=int, help="retrain the K best configurations with further seeds (0: off)")
    p.add_argument("--confirm-seeds", type=int, help="how many further seeds each confirmed configuration gets")
    p.add_argument("--address", help="connect to a running Ray cluster (auto, or host:port)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted experiment --storage/--name (without --name: the space's latest)")


def cmd_tune(args) -> int:
    from mmray.tune.search import run_search
    from mmray.tune.storage import RunOptions, fresh_name, latest_name, parse_storage
    from mmray.tune.space import load_space

    space = load_space(args.space).with_overrides(
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, epochs=args.epochs,
        dataset=args.dataset, data_dir=args.data_dir, seed=args.seed,
        confirm_top_k=args.confirm_top_k, confirm_seeds=args.confirm_seeds)
    storage = parse_storage(args.storage)
    name = args.name or (latest_name(storage, space.name) if args.resume else fresh_name(space.name))
    options = RunOptions(storage=storage, name=name, address=args.address, resume=args.resume,
                         workdir=Path(args.workdir).expanduser().resolve())
    run_search(space, options)
    return 0


COMPARE_HELP = """\
Compare balancing methods fairly: every method of the plan gets the same search budget over its own
hyperparameters, trains on the same shared settings, has its choice confirmed over the same seeds, and
each seed's checkpoint chosen on validation is evaluated on test once. Writes comparison.md, .csv,
.json and .png in STORAGE/NAME, next to one experiment per method (STORAGE/NAME/METHOD).

The plan (YAML; search_spaces/compare.yaml is one):
  dataset: synthetic-av          the dataset (data_dir: its prepared folder, or --data-dir)
  methods: [joint, ogm, gmm]     the methods compared
  spaces: {gmm: my-gmm.yaml}     optional: a method's search space; by default
                                 search_spaces/<dataset>-<method>.yaml, else (for a dataset without
                                 spaces of its own there) search_spaces/<method>.yaml
  metric: val/fused_acc          selection metric (validation only), mode: max
  seed: 0                        sampler seed; confirmation seeds are seed+1 .. seed+seeds, for all
  trials: 6                      search trials per method, with scheduler: {type: asha, ...}
  max_concurrent / resources     trials at once and each trial's workers, CPUs, GPUs
  confirm: {top_k: 2, seeds: 3}  the top_k configurations retrained with the seeds; best mean wins
  shared: {epochs: 6, ...}       training settings every method uses (model, batch_size, optimizer, ...)
  searched: {lr: {type: log-float, low: 3.0e-4, high: 3.0e-3}}   searched for every method alike
A method's space contributes only its own hyperparameters; a training setting it fixes differently
from shared (or that the plan does not settle) is refused as inconsistent shared settings.
"""


def cmd_compare(args) -> int:
    from mmray.compare.plan import load_plan
    from mmray.compare.run import CompareOptions, run_compare

    plan = load_plan(args.plan).with_overrides(
        methods=tuple(m.strip() for m in args.methods.split(",")) if args.methods else None,
        dataset=args.dataset, data_dir=args.data_dir, trials=args.trials, epochs=args.epochs, seeds=args.seeds,
        name=args.name)
    options = CompareOptions(storage=Path(args.storage).expanduser().resolve(), name=plan.name,
                             address=args.address, resume=args.resume)
    run_compare(plan, options)
    return 0


def prepare_dataset(args):
    """`mmray prepare`'s work: the dataset's typed options from the flags, then its prepare."""
    from mmray.data.registry import get_dataset

    dataset = get_dataset(args.dataset)
    return dataset.prepare(Path(args.out), dataset.options_from_flags(vars(args)), force=args.force)


def cmd_prepare(args) -> int:
    manifest = prepare_dataset(args)
    sizes = ", ".join(f"{s} {manifest.split_size(s)}" for s in manifest.shards)
    skipped = f"; {len(manifest.skipped)} clips skipped (named in manifest.json)" if manifest.skipped else ""
    print(f"mmray: prepared {manifest.dataset} in {args.out} ({sizes}){skipped}")
    return 0


def cmd_train(args) -> int:
    from mmray.config import parse_assignment
    from mmray.data.registry import resolve_data_dir
    from mmray.train.config import TrainConfig
    from mmray.train.checkpoint import evaluate_checkpoint
    from mmray.train.launch import run_in_process, start_local_ray

    values = {"method": args.method, "dataset": args.dataset, "data_dir": args.data_dir, "seed": args.seed}
    values.update(parse_assignment(item) for item in args.set or [])
    if args.epochs is not None:
        values["epochs"] = args.epochs
    cfg = TrainConfig.from_flat(values, where="command line")
    resolve_data_dir(cfg.dataset, cfg.data_dir)  # a missing or bad data folder fails before Ray starts
    out = Path(args.out or tempfile.mkdtemp(prefix="mmray-train-"))
    start_local_ray(args.threads)
    _, best = run_in_process(cfg, out, threads=args.threads)
    test = evaluate_checkpoint(best, "test")
    print("test (best validation epoch):", "  ".join(f"{k}={v:.4f}" for k, v in test.items()))
    print(f"checkpoints in {out}")
    return 0


def cmd_purify(args) -> int:
    from mmray.train.checkpoint import find_checkpoint
    from mmray.train.launch import start_local_ray
    from mmray.train.purify import purify

    find_checkpoint(args.checkpoint)  # bad input fails before Ray starts
    start_local_ray(args.threads)
    summary = purify(args.checkpoint, threshold=args.threshold, epochs=args.epochs, lr_factor=args.lr_factor,
                     threads=args.threads)
    fmt = lambda d, k: f"{d[k]:.4f}"
    print(f"kept {summary['kept']} of {summary['train_samples']} train samples ({summary['kept_fraction']:.1%}), "
          f"threshold P(balanced) > {summary['threshold']:g}")
    if "dropped_precision_corrupted" in summary:
        print(f"dropped samples that are corrupted (precision): {summary['dropped_precision_corrupted']:.1%}")
    if not summary["fine_tuned_model_selected"]:
        print("fine-tuning did not improve validation accuracy: the model before purification is kept")
    for split in ("val", "test"):
        key = f"{split}/fused_acc"
        print(f"{key}: before {fmt(summary['before'], key)}  after {fmt(summary['after'], key)}")
    print(f"kept ids, dropped samples and the fine-tuned checkpoint in {summary['output']}")
    return 0


def cmd_diagnose(args) -> int:
    from mmray.methods.diagnostics import headline
    from mmray.train.diagnose import DIAGNOSTICS_JSON, DIAGNOSTICS_PNG, diagnose_checkpoint
    from mmray.train.launch import start_local_ray
    from mmray.train.checkpoint import find_checkpoint

    checkpoint = find_checkpoint(args.checkpoint)  # bad input fails before Ray starts
    start_local_ray(args.threads)
    report = diagnose_checkpoint(checkpoint)
    for split in ("val", "test"):
        acc = report[split]["accuracy"]
        print(f"{split}: " + "  ".join(f"{k}_acc={v:.4f}" for k, v in acc.items()) + "  "
              + "  ".join(f"{k}={v:.3f}" for k, v in headline(report, split).items()))
    print(f"{DIAGNOSTICS_JSON} and {DIAGNOSTICS_PNG} in {report['checkpoint']}")
    return 0


def cmd_calibrate(args) -> int:
    import numpy as np

    from mmray.train.calibrate import calibrate, calibration_target
    from mmray.train.launch import start_local_ray

    checkpoint, _ = calibration_target(args.checkpoint, args.kind, args.reg)  # bad input fails before Ray starts
    start_local_ray(args.threads)
    summary = calibrate(checkpoint, kind=args.kind, reg=args.reg)
    c = summary["calibration"]
    keys = ("scale_audio", "scale_visual") if args.kind == "standardize" else ("w_audio", "w_visual")
    print(f"{args.kind} calibration fitted on validation:",
          "  ".join(f"{k}={np.round(c[k], 3).tolist()}" for k in keys))
    for key in ("val/fused_acc", "test/fused_acc", "val/nll", "test/nll"):
        print(f"{key}: before {summary['before'][key]:.4f}  after {summary['after'][key]:.4f}")
    print(f"written to {summary['output']}")
    return 0


def cmd_bench(args) -> int:
    import importlib
    return importlib.import_module(f"mmray.bench.{args.what.replace('-', '_')}").main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="prepare a dataset into Parquet shards")
    p.add_argument("dataset", help="synthetic-av, cremad, ave, kinetics-sounds or manifest (a CSV)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-encoding", choices=["raw", "jpeg"], help="default: raw for synthetic-av, jpeg for real data")
    p.add_argument("--force", action="store_true", help="replace an existing prepared folder")
    prepare_arguments(p)
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("train", help="train once, in this process (for debugging)")
    p.add_argument("--method", default="joint")
    p.add_argument("--dataset", default="synthetic-av")
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any training setting, e.g. --set lr=0.003")
    p.add_argument("--out", help="checkpoint folder (default: a new temp folder)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("purify", help="gmm data purification: drop imbalanced samples, fine-tune on the rest")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a gmm checkpoint folder, or an experiment folder (its selected checkpoint)")
    p.add_argument("--threshold", type=float, help="keep samples with P(balanced) above this (default: the run's)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the run's purify_epochs, or 2)")
    p.add_argument("--lr-factor", type=float, default=0.1, help="fine-tuning lr = the run's lr x this")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.set_defaults(run=cmd_purify)

    p = sub.add_parser("diagnose", help="decision-layer diagnostics of a finished run (any method)")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a checkpoint folder, or an experiment folder (its selected checkpoint)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.set_defaults(run=cmd_diagnose)

    p = sub.add_parser("calibrate", help="decision-layer calibration fitted on validation (any method)")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a checkpoint folder, or an experiment folder (its selected checkpoint)")
    p.add_argument("--kind", choices=["scalar", "class", "standardize"], default="scalar",
                   help="per-modality weights, per-modality-and-class weights, or logit standardisation")
    p.add_argument("--reg", type=float, default=0.0, help="weight of the pull of the weights towards 1")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.set_defaults(run=cmd_calibrate)

    p = sub.add_parser("tune", help="run a hyperparameter search (same as python -m mmray.tune)")
    add_tune_arguments(p)
    p.set_defaults(run=cmd_tune)

    p = sub.add_parser("compare", help="fair, tuned, multi-seed comparison of methods (a plan YAML)",
                       description=COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", help="a plan file in search_spaces/ (compare.yaml or compare) or a path")
    p.add_argument("--methods", help="comma-separated methods, replacing the plan's")
    p.add_argument("--dataset", help="dataset name (its methods' spaces are looked up for it)")
    p.add_argument("--data-dir", help="a prepared dataset folder")
    p.add_argument("--trials", type=int, help="search trials per method")
    p.add_argument("--epochs", type=int, help="epochs every method trains")
    p.add_argument("--seeds", type=int, help="confirmation seeds (seed+1 .. seed+N, the same for every method)")
    p.add_argument("--storage", default="~/mmray_results", help="local folder holding comparisons (default: %(default)s)")
    p.add_argument("--name", help="comparison name (default: the plan's name)")
    p.add_argument("--address", help="connect to a running Ray cluster (auto, or host:port)")
    p.add_argument("--resume", action="store_true", help="continue STORAGE/NAME; finished methods are not rerun")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("bench", help="benchmarks that print figures")
    p.add_argument("what", choices=["search", "search-quality", "data", "gpu", "imbalance", "methods", "decision", "prepare"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.run, args)


def run_command(fn, args) -> int:
    try:
        return fn(args)
    except UserError as e:
        print(f"mmray: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A full disk or a read-only or forbidden folder met while writing: the user's to fix, named in one line.
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        print(f"mmray: error: {e.filename or 'writing'}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmray: interrupted", file=sys.stderr)
        return 130


def tune_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmray.tune", description="Run a hyperparameter search.")
    add_tune_arguments(parser)
    return run_command(cmd_tune, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
