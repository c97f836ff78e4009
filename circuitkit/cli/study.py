"""``circuitkit study run SPEC`` and ``circuitkit study report DIR``."""

from __future__ import annotations

from circuitkit.cli.common import int_at_least

COMMANDS = {"study": "batch ablation studies from a spec file"}


def register(sub) -> None:
    from circuitkit.studies.executors import EXECUTOR_NAMES

    study = sub.add_parser("study", help=COMMANDS["study"],
                           description="Run ablation studies described by a YAML / TOML spec, resumably, "
                                       "and report their results.")
    ssub = study.add_subparsers(dest="study_command", metavar="STUDY_COMMAND")
    ssub.required = True
    run = ssub.add_parser(
        "run", help="run or resume a study",
        description="Run every (model, task, ablation, target, seed) unit of SPEC that is not yet in its "
                    "output_dir. Interrupted runs resume with the same command. Spec keys: models, tasks "
                    "({name, params, label} for a builder, {file, label} for a task file; relative paths and model folders "
                    "are relative to the spec), ablations (zero|mean|resample), targets (every_head, every_mlp, "
                    "head_sets, top_k_from {score, k}), metrics, seeds, batch_size, output_dir.")
    run.add_argument("spec", help="study spec (.yaml, .yml or .toml)")
    run.add_argument("--executor", choices=EXECUTOR_NAMES, default="serial",
                     help="where units run")
    run.add_argument("--workers", type=int_at_least(1), default=None, help="parallel workers for process / ray")
    run.add_argument("--force-new", action="store_true",
                     help="delete results made with a different spec, other input files or other versions (and "
                          "a corrupt study.json) and start over; symbolic links are removed, never followed")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.set_defaults(func=_cmd_run)
    report = ssub.add_parser("report", help="write an HTML report and a summary CSV",
                             description="Write report.html (Plotly figures) and summary.csv for a study folder.")
    report.add_argument("dir", help="the study's output_dir")
    report.add_argument("--out", default=None, help="folder for report.html and summary.csv (default: DIR)")
    report.set_defaults(func=_cmd_report)


def _cmd_run(args) -> int:
    import signal
    import threading

    # A plain `kill` (SIGTERM) stops the run as Ctrl-C does: one line, workers stopped, claims released.
    main = threading.current_thread() is threading.main_thread()
    if main:
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run(args)
    finally:
        if main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _terminated(signum, frame):
    raise KeyboardInterrupt


def _run(args) -> int:
    import sys

    from circuitkit.studies import StudyInterrupted, run_study

    try:
        results = run_study(args.spec, executor=args.executor, workers=args.workers, force_new=args.force_new,
                            progress=not args.no_progress)
    except StudyInterrupted as exc:  # one line: what is saved and how to resume
        print(exc, file=sys.stderr)
        return 130 if exc.cause == "interrupt" else 1
    except KeyboardInterrupt:  # before any unit ran (checking the spec, loading models)
        print("interrupted before any unit ran; nothing was saved", file=sys.stderr)
        return 130
    ran, total = results.attrs.get("units_run"), results.attrs.get("units_total")
    if ran == 0:
        print(f"nothing to do: all {total} units of this spec were already done; {len(results)} rows in the results "
              "table (`circuitkit study report DIR` draws them; --force-new starts over)")
    else:
        print(f"ran {ran} of {total} units ({total - ran} were already done); {len(results)} rows in the results table")
    return 0


def _cmd_report(args) -> int:
    from circuitkit.cli.common import check_out_dir
    from circuitkit.viz.report import write_report

    check_out_dir(args.out)  # a file there, or a read-only folder, is refused before the report is built
    html, csv = write_report(args.dir, args.out)
    print(f"wrote {html}\nwrote {csv}")
    return 0
