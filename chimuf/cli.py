"""The `chimuf` command: the edge where config is loaded, inputs checked and errors printed.

Every chimuf error becomes one clear line on stderr and a non-zero exit; SIGTERM and Ctrl-C stop
the study cleanly, leaving the run marked `interrupted` so that a rerun resumes it. Each command
imports the modules that do its work when it runs, so `chimuf --help` starts instantly.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from chimuf.core import folders
from chimuf.core.config import (
    PROFILES,
    REPORT_ENGINES,
    REPORT_FORMATS,
    ReportConfig,
    StudyConfig,
    TrackingConfig,
    load_config,
    to_toml,
)
from chimuf.core.console import Console, printable
from chimuf.core.errors import ChimufError, ConfigError, Interrupted
from chimuf.core.files import atomic_write_json, atomic_write_text
from chimuf.core.results import ANALYSIS_STAGES, dumps
from chimuf.ml.tfstart import quiet_tensorflow, start_tensorflow
from chimuf.tuning.protocol import check_worker_id, default_worker_id, parse_address, with_secret, with_tls
from chimuf.version import __version__, python_refusal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chimuf",
        description=(
            "Run a complete, reproducible CNN study for binary image classification "
            "(Chihuahua vs Muffin, or any folder of two image classes) and write its report."
        ),
        epilog="The best honest model for your folder, now: `chimuf study --profile fast --data DIR`, then "
        "`chimuf predict RUN_DIR IMAGE`. The whole paper: --profile paper; a minute's check: --profile "
        "smoke. `chimuf COMMAND --help` tells more.",
    )
    parser.add_argument("--version", action="version", version=f"chimuf {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")  # none: main prints the help

    study = commands.add_parser(
        "study", help="run or resume the whole study, report included",
        description="Run the study stage by stage (audit, split, cache, six trainings, tuning, "
        "final model, evaluation, k-fold, suspect labels, explanation; then beyond the paper: the "
        "modern recipe, the optional pretrained baseline, your own builders, fold ensemble and test-time "
        "flips; the model to take home, chosen on validation; export, report). A rerun with the "
        "same settings skips finished stages and resumes an interrupted training where it stopped. "
        "New here? `--profile fast` skips the paper's six trainings, search and k-fold: the modern "
        "recipe beside a short final model, the model to take home chosen on validation and exported "
        "(`--plan` says how long it takes here; add `--config` with [data] image_size = 64 for a "
        "quicker first look); `chimuf predict RUN_DIR IMAGE` then uses it.",
    )
    add_config_options(study)
    study.add_argument("--data", metavar="DIR",
                       help="data folder with one sub-folder per class (default: data.dir from "
                       "the config, else $CHIMUF_DATA, else ./data)")
    add_data_options(study)
    study.add_argument("--out", metavar="RUN_DIR",
                       help="run folder (default: runs/<profile>); an existing one is resumed")
    study.add_argument("--seed", type=int, help="override the config's seed")
    study.add_argument("--stop-after", choices=ANALYSIS_STAGES, default="",
                       help="stop after this stage (the run stays resumable)")
    study.add_argument("--project", metavar="DIR", type=Path,
                       help="also publish the report's Quarto project into DIR (default: ./report when it "
                       "is chimuf's Quarto project, as in a checkout; else $CHIMUF_REPORT_PROJECT; "
                       "'none': nowhere)")
    study.add_argument("--tune-chief", metavar="[HOST:]PORT",
                       help="tune on several machines: during the tuning stage, serve its trials at "
                       "HOST:PORT (HOST: 127.0.0.1 unless given) to `chimuf tune-worker` processes "
                       "(docs/distributed.md)")
    study.add_argument("--secret-file", metavar="PATH",
                       help="the secret the tuning chief and its workers share (else $CHIMUF_TUNE_SECRET); "
                       "needed when --tune-chief listens beyond loopback")
    study.add_argument("--tls-cert", metavar="PEM", help="the tuning chief serves TLS with this certificate")
    study.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    study.add_argument("--plan", action="store_true",
                       help="print the plan only: the stages, trainings and epochs, and how long they should "
                       "take here (from a short probe of each architecture), then stop after the split")
    study.add_argument("--weights", metavar="PATH",
                       help="train the pretrained baseline (pretrained.backbone, mobilenet_v3_small unless "
                       "set) from this no-top weights file of its backbone, as pretrained.weights does")
    study.add_argument("--mlflow", metavar="URI",
                       help="also log the run to MLflow at URI: a local folder (an SQLite store in it), "
                       "sqlite:///mlflow.db or http://host:5000, as tracking.mlflow_uri does; "
                       "needs chimuf[mlflow]")

    worker = commands.add_parser(
        "tune-worker", help="run trials for a study's tuning chief on this machine",
        description="Connect to a study started with --tune-chief, run trials of its search until "
        "it says the search is over, and report each epoch and result to it. Give the worker the "
        "chief's config, profile and seed; it reads the split and image cache from --out when that "
        "is the chief's run folder, and makes them from --data otherwise.",
    )
    worker.add_argument("--chief", metavar="HOST:PORT", required=True,
                        help="the address the chief's --tune-chief listens on")
    worker.add_argument("--secret-file", metavar="PATH",
                        help="the chief's shared secret (else $CHIMUF_TUNE_SECRET)")
    worker.add_argument("--tls-ca", metavar="PEM",
                        help="talk TLS to the chief, trusting this certificate (the chief's, or its CA's)")
    add_config_options(worker)
    worker.add_argument("--data", metavar="DIR",
                        help="data folder, needed only when --out holds no finished split and cache")
    worker.add_argument("--out", metavar="RUN_DIR",
                        help="the chief's run folder if shared, else a folder of this machine "
                        "(default: runs/<profile>); the worker's files go to RUN_DIR/tune-workers/ID/")
    worker.add_argument("--seed", type=int, help="override the config's seed (use the chief's)")
    worker.add_argument("--id", help="worker id (default: worker-<hostname>-<pid>); a worker restarted "
                        "with the same id resumes its unfinished trial")
    worker.add_argument("--chief-timeout", metavar="SECONDS", type=float, default=600.0,
                        help="how long to wait for the chief to answer, at start and for each request "
                        "(default: %(default)g)")

    audit = commands.add_parser(
        "audit", help="check every file of a data folder",
        description="List every file under DIR (one sub-folder per class) with a verdict: usable, "
        "usable after conversion, or rejected, with the reason; and find exact and near "
        "duplicates.",
    )
    audit.add_argument("dir", metavar="DIR", type=Path,
                       help="a folder with one sub-folder per class, or a labels CSV (docs/data.md)")
    audit.add_argument("--test-dir", metavar="DIR", type=Path,
                       help="a given test folder: also audited, and its near duplicates in DIR listed")
    audit.add_argument("--json", action="store_true", help="print the manifest as JSON")
    audit.add_argument("--out", metavar="FILE", type=Path, help="also write the manifest here")
    audit.add_argument("--list-duplicates", action="store_true",
                       help="print every rejected file and duplicate group (default: a summary, the full "
                       "list written to a file it names)")
    add_config_options(audit)

    report = commands.add_parser(
        "report", help="render the report of a run (HTML and PDF)",
        description="Render the report of a finished or partial run from its results.json and "
        "figures: Quarto where installed, else pandoc (HTML) and Typst (PDF).",
    )
    report.add_argument("run", metavar="RUN_DIR", type=Path)
    report.add_argument("--format", dest="formats", action="append", choices=REPORT_FORMATS,
                        help="render only this format (repeatable; default: both)")
    report.add_argument("--engine", choices=REPORT_ENGINES, default="auto")
    report.add_argument("--project", metavar="DIR", type=Path,
                        help="also publish the Quarto project (index.qmd, figures, HTML, PDF) into DIR, "
                        "replacing the run there ('none': nowhere; default: ./report when it is chimuf's "
                        "Quarto project, "
                        "as in a checkout; else $CHIMUF_REPORT_PROJECT)")

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a saved model on a labelled folder",
        description="Accuracy, ROC AUC, confusion matrix (rows true, columns predicted) and "
        "per-class metrics of MODEL (.keras) on DIR (one sub-folder per class, named as the "
        "model's classes). Files the audit rejects are listed and skipped.",
    )
    evaluate.add_argument("model", metavar="MODEL", type=Path)
    evaluate.add_argument("dir", metavar="DIR", type=Path)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_options(evaluate)
    add_config_options(evaluate)

    predict = commands.add_parser(
        "predict", help="classify image files with a saved model",
        description="Class and probability for each IMAGE. A bad file is reported by name and "
        "reason and the others are still predicted; the exit status is 1 if any file failed.",
    )
    predict.add_argument("model", metavar="MODEL", type=Path,
                         help="a .keras file, or a run folder: the model its study took home (export/)")
    predict.add_argument("images", metavar="IMAGE", type=Path, nargs="+",
                         help="image files, or folders: every file under a folder (at any depth)")
    fmt = predict.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_const", dest="format", const="json")
    fmt.add_argument("--csv", action="store_const", dest="format", const="csv")
    predict.add_argument("--explain", metavar="OUTDIR", type=Path,
                         help="also write a Grad-CAM overlay per image into OUTDIR (of MODEL alone)")
    add_model_options(predict)
    add_config_options(predict)

    export = commands.add_parser(
        "export", help="export a saved model to LiteRT (TFLite), SavedModel, ONNX or OpenVINO, checked",
        description="Write MODEL (.keras) as each --format into --out (default: beside MODEL) through "
        "Keras' own model.export, its classes and decision threshold beside it, and check each export "
        "at once with its own runtime: its probabilities on sample images against the Keras model's "
        "(largest difference printed). LiteRT/TFLite and SavedModel come with TensorFlow; ONNX needs "
        "`pip install 'chimuf[onnx]'`, OpenVINO `pip install 'chimuf[openvino]'`. Models trained in "
        "mixed precision are exported as a float32 copy.",
    )
    export.add_argument("model", metavar="MODEL", type=Path)
    export.add_argument("--format", dest="formats", action="append",
                        choices=("litert", "tflite", "savedmodel", "onnx", "openvino"),
                        help="format to write (repeatable; default: litert, a .tflite file)")
    export.add_argument("--out", metavar="DIR", type=Path,
                        help="where the exports go (default: beside MODEL)")
    export.add_argument("--check", metavar="IMAGE|DIR", type=Path, nargs="+", default=[],
                        help="images to compare the export with the model on; a folder with one "
                        "sub-folder per class labels them, so accuracies are printed (default: 16 "
                        "random images)")
    export.add_argument("--quantize", choices=("float16", "dynamic", "int8"), default="",
                        help="also write each LiteRT/TFLite export quantized (NAME.KIND.tflite) and set "
                        "its size and accuracy beside the float one's")
    export.add_argument("--representative", metavar="IMAGE|DIR", type=Path, nargs="+", default=[],
                        help="photos int8 calibrates on: validation photos (default: the --check images)")
    add_config_options(export)  # its [audit] reads the --check images, its [model_files] limits MODEL

    track = commands.add_parser(
        "track", help="log a finished (or partial) run folder to MLflow",
        description="Log RUN_DIR's results.json, report and exported model to MLflow: config as "
        "params, headline and per-epoch metrics, artifacts (as `chimuf study --mlflow` does at the "
        "end). A run already logged there is not logged twice. Needs chimuf[mlflow].",
    )
    track.add_argument("run", metavar="RUN_DIR", type=Path)
    track.add_argument("--mlflow", metavar="URI", required=True,
                       help="MLflow tracking URI, or a local folder (an SQLite store in it)")
    track.add_argument("--experiment", default=TrackingConfig().mlflow_experiment,
                       help="MLflow experiment (default: %(default)s)")

    compare = commands.add_parser(
        "compare", help="what differs between two runs, and whether their numbers agree",
        description="Set two runs side by side: config, data, installed versions and lock, hardware "
        "and determinism, then every headline number with its interval, and whether each run's value "
        "lies within the other's interval. Reads the two results.json files only.",
    )
    compare.add_argument("run_a", metavar="RUN_A", type=Path)
    compare.add_argument("run_b", metavar="RUN_B", type=Path)
    compare.add_argument("--json", action="store_true", help="print one JSON object")

    config = commands.add_parser(
        "config", help="print the effective study config as commented TOML",
        description="Print every setting with its explanation; save it, edit it, pass it back "
        "with --config.",
    )
    add_config_options(config)
    return parser


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="TOML", type=Path, help="study config file")
    parser.add_argument("--profile", choices=tuple(PROFILES),
                        help="preset to start from (default: the file's `profile`, else paper); "
                        "fast: the best honest model for your folder in minutes")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--labels, --test-dir, --val-dir: the data as the user has it (the config's data.* keys)."""
    parser.add_argument("--labels", metavar="CSV",
                        help="a labels CSV (path,label[,split][,group], paths relative to its folder) "
                        "instead of class folders, as data.labels_csv does (docs/data.md)")
    parser.add_argument("--test-dir", metavar="DIR",
                        help="evaluate on exactly this folder (same class folders) and split only the rest, "
                        "as data.test_dir does")
    parser.add_argument("--val-dir", metavar="DIR",
                        help="validate on exactly this folder (same class folders), as data.val_dir does")


def data_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The data.* keys the flags set, as absolute paths (they name files of this working directory)."""
    flags = {"labels_csv": args.labels, "test_dir": args.test_dir, "val_dir": args.val_dir}
    return {key: str(Path(value).expanduser().resolve()) for key, value in flags.items() if value}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--threshold, --ensemble and --tta: how a model (or several) decides."""
    add_threshold_option(parser)
    parser.add_argument("--ensemble", metavar="MODEL", type=Path, nargs="+", default=[],
                        help="more models (.keras) whose probabilities are averaged with MODEL's, e.g. the "
                        "k-fold models of a study (RUN/kfold/fold*.keras); decides at 0.5 unless --threshold")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average each image's probability with its mirror's")


def add_threshold_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", metavar="T", type=probability_threshold,
                        help="decide at this threshold (P(second class) > T); default: the model's own, "
                        "from its .classes.json (a study's exported model carries the threshold chosen "
                        "on validation data), else 0.5")


def probability_threshold(text: str) -> float:
    """`--threshold`: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text!r}")
    return value


def load(args: argparse.Namespace, **overrides: object) -> StudyConfig:
    return load_config(args.config, args.profile, overrides or None)


# --- commands ----------------------------------------------------------------------------------


def cmd_study(args: argparse.Namespace, console: Console) -> int:
    from chimuf.study import run_study

    tune_chief = None
    if args.tune_chief:
        listen = parse_address(args.tune_chief, "--tune-chief", default_host="127.0.0.1")
        tune_chief = with_tls(with_secret(listen, args.secret_file, "--tune-chief"), cert=args.tls_cert,
                              key=args.tls_key)
    overrides: dict[str, object] = {"seed": args.seed} if args.seed is not None else {}
    if args.mlflow:
        overrides["tracking"] = {"mlflow_uri": args.mlflow}
    if args.weights:
        overrides["pretrained"] = {"weights": str(Path(args.weights).expanduser().resolve())}
    if data_overrides(args):
        overrides["data"] = data_overrides(args)
    config = load(args, **overrides)
    if args.weights and not config.pretrained.backbone:
        # --weights alone means "the default backbone"; one set in the config file wins
        overrides["pretrained"] = {**overrides["pretrained"], "backbone": "mobilenet_v3_small"}  # type: ignore[dict-item]
        config = load(args, **overrides)
    paths = folders.study_paths(config, args.data, args.out)
    project = report_project(args.project)
    console.info(f"chimuf study: profile {config.profile}, seed {config.seed}, data {paths.data_dir}")
    console.info(f"run folder {paths.run_dir}")
    start_tensorflow(config.train.threads_per_unit)
    run_study(config, paths, console, stop_after=args.stop_after, tune_chief=tune_chief, plan_only=args.plan,
              project=project)
    return 0


def report_project(flag: Path | None) -> Path | None:
    """The Quarto project folder to publish into (chimuf.report.project), checked now."""
    from chimuf.report.project import check_project_dir, project_dir

    folder = project_dir(flag, Path.cwd())
    return check_project_dir(folder) if folder is not None else None


def cmd_tune_worker(args: argparse.Namespace, console: Console) -> int:
    from chimuf.tools.tune_worker import WorkerSetup, run_worker

    chief = with_tls(with_secret(parse_address(args.chief, "--chief"), args.secret_file, "--chief"),
                     ca=args.tls_ca)
    worker_id = check_worker_id(args.id) if args.id is not None else default_worker_id()
    if not (args.chief_timeout > 0 and math.isfinite(args.chief_timeout)):
        raise ConfigError(f"`--chief-timeout` must be a positive number of seconds, got {args.chief_timeout}")
    overrides = {"seed": args.seed} if args.seed is not None else {}
    config = load(args, **overrides)
    run_dir = folders.run_folder(args.out, config)
    console.info(f"chimuf tune-worker {worker_id}: chief {chief}, profile {config.profile}, "
                 f"seed {config.seed}, run folder {run_dir}")
    cwd = Path.cwd()
    setup = WorkerSetup(chief, worker_id, run_dir.resolve(), folders.cache_folder(config, cwd).resolve(),
                        lambda: folders.resolve_data_dir(args.data, config, cwd), args.chief_timeout)
    start_tensorflow(config.train.threads_per_unit)
    run_worker(config, setup, console)
    return 0


def cmd_audit(args: argparse.Namespace, console: Console) -> int:
    from chimuf.data import audit
    from chimuf.data.sources import Sources

    config = load(args)
    labels = args.dir if args.dir.is_file() else None  # a labels CSV, audited with the files it names
    data_dir = args.dir.parent if labels else args.dir
    outcome = audit.audit_sources(Sources(data_dir, labels, args.test_dir), config.audit, console,
                                  positive=config.data.positive)
    if args.out:
        atomic_write_json(args.out, outcome)
    if args.json or args.list_duplicates:
        print(dumps(outcome) if args.json else audit.summary(outcome))
        return 0
    full_list = folders.cache_folder(config).resolve() / "audit" / f"{outcome.digest[:16]}.txt"
    atomic_write_text(full_list, audit.summary(outcome) + "\n")
    print(audit.summary(outcome, full=False, full_list=full_list))
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from chimuf import report

    cfg = ReportConfig()
    cfg = replace(cfg, formats=tuple(args.formats or cfg.formats), engine=args.engine)
    project = report_project(args.project)
    outcome = report.build_report(args.run, cfg, console)
    for label, rel in (("HTML", outcome.html), ("PDF", outcome.pdf)):
        if rel:
            console.info(f"{label}: {args.run / rel}")
    if project is not None:
        from chimuf.report.project import publish

        console.info(f"Quarto project: {publish(args.run, project)} (`quarto render {project}`)")
    return 0


def cmd_evaluate(args: argparse.Namespace, console: Console) -> int:
    from chimuf.tools import evaluate_folder

    config = load(args)  # its [audit] reads the images, its [model_files] limits the model file
    start_tensorflow()
    evaluation = evaluate_folder.evaluate_folder(args.model, args.dir, config.audit, console,
                                                 threshold=args.threshold, ensemble=args.ensemble,
                                                 flips=args.tta, limits=config.model_files)
    print(evaluate_folder.format_folder_evaluation(evaluation, as_json=args.json))
    return 0


def cmd_predict(args: argparse.Namespace, console: Console) -> int:
    from chimuf.data.sources import expand_folders
    from chimuf.tools import predict

    config = load(args)  # its [audit] reads the images, its [model_files] limits the model file
    args.images = expand_folders(args.images)
    start_tensorflow()
    args.model = predict.model_of(args.model)  # a run folder: the model it took home
    predictions = predict.predict_files(args.model, args.images, config.audit, console,
                                        threshold=args.threshold, ensemble=args.ensemble, flips=args.tta,
                                        limits=config.model_files)
    # The predictions are printed before any overlay is drawn: a failing --explain (its error
    # reaches main as one line, exit status non-zero) cannot take them away.
    print(predict.format_predictions(predictions, args.format or "table"), flush=True)
    explained = []
    if args.explain:
        from chimuf.tools.explain_files import explain_files

        explained = explain_files(args.model, args.images, args.explain, config.audit, console,
                                  threshold=args.threshold, limits=config.model_files)
    return 1 if any(p.error for p in predictions) or any(e.error for e in explained) else 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from chimuf.tools import export

    config = load(args)  # its [audit] reads the --check images, its [model_files] limits the model file
    start_tensorflow()
    checks, samples = export.export_files(args.model, args.formats or ["litert"], args.out, args.check,
                                          config.audit, console, limits=config.model_files,
                                          quantize=args.quantize, representative_files=args.representative)
    print(export.format_checks(checks, samples, export.threshold_of(args.model)))
    return 0


def cmd_track(args: argparse.Namespace, console: Console) -> int:
    from chimuf import report
    from chimuf.tools import tracking

    cfg = TrackingConfig(mlflow_uri=args.mlflow, mlflow_experiment=args.experiment)
    tracking.check_mlflow(cfg)
    results = report.read_results(args.run)
    return 0 if tracking.log_run(results, args.run, cfg, console) is not None else 1


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from chimuf.tools import compare

    comparison = compare.compare_runs(args.run_a, args.run_b)
    print(compare.format_comparison(comparison, as_json=args.json))
    return 0


def cmd_config(args: argparse.Namespace, console: Console) -> int:
    print(to_toml(load(args)), end="")
    return 0


COMMANDS = {
    "study": cmd_study,
    "tune-worker": cmd_tune_worker,
    "audit": cmd_audit,
    "report": cmd_report,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "track": cmd_track,
    "compare": cmd_compare,
    "config": cmd_config,
}


# --- the edge ----------------------------------------------------------------------------------


def raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}; rerun the same command to resume")


def main(argv: Sequence[str] | None = None) -> int:
    refusal = python_refusal()
    if refusal:
        print(f"chimuf: error: {refusal}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # `chimuf` alone: the help is the answer, on stdout; the exit status stays argparse's 2 for
        # an incomplete command line, so a script that lost its command still fails.
        parser.print_help()
        return 2
    console = Console(quiet=args.quiet)
    signal.signal(signal.SIGTERM, raise_interrupted)
    quiet_tensorflow()
    try:
        return COMMANDS[args.command](args, console)
    except ChimufError as exc:
        if exc.detail:  # at length, for the run's log only (when there is one)
            console.write(f"error detail: {exc.detail}", echo=False)
        print(f"chimuf {args.command}: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"chimuf {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return Interrupted.exit_code
    except MemoryError:
        # A file or model that asks for more memory than there is: never a traceback.
        print(f"chimuf {args.command}: error: out of memory; an input (a file, a model, a run folder) "
              "asks for more memory than this machine has: check it, or free memory and rerun",
              file=sys.stderr)
        return 1
    except OSError as exc:
        # Disk full, permissions: say which file, leave the run marked failed (engine did).
        where = f" `{exc.filename}`" if exc.filename else ""
        print(f"chimuf {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    finally:
        console.log_to(None)
