"""``fedshield client``: a data owner's side of a deployed federation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedshield.cli.shared import InsecureFlag, console, warn_insecure

client_app = typer.Typer(help="A data owner's side of a deployed federation.", no_args_is_help=True)


@client_app.command("start")
def client_start(
    superlink: Annotated[str, typer.Option(help="HOST:PORT of the federation's SuperLink.")],
    data: Annotated[
        Path, typer.Option(help="Your data file (CSV, JSON Lines or Parquet). It never leaves.")
    ],
    epsilon_budget: Annotated[
        float, typer.Option(help="Your total privacy budget for this data, across runs.")
    ],
    ca: Annotated[
        Path | None, typer.Option(help="The federation's CA certificate (ca.crt).")
    ] = None,
    auth_key: Annotated[
        Path | None, typer.Option(help="This node's private key (NAME.key, mode 0600).")
    ] = None,
    delta: Annotated[float, typer.Option(help="delta; must be < 1/N.")] = 1e-5,
    text_column: Annotated[str, typer.Option()] = "text",
    label_column: Annotated[str, typer.Option()] = "label",
    ledger_dir: Annotated[Path, typer.Option(help="Where your privacy ledger lives.")] = Path(
        "~/.fedshield/ledgers"
    ),
    audit_dir: Annotated[Path, typer.Option(help="Where your audit log lives.")] = Path(
        "~/.fedshield/audit"
    ),
    owner_id: Annotated[str, typer.Option(help="A public label for this owner in reports.")] = "",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    cache_dir: Annotated[
        str,
        typer.Option(
            help="Where your records' MiniLM encodings are kept between rounds (derived from "
            "your text: they stay here, mode 0600). '' = re-encode every round."
        ),
    ] = "~/.fedshield/cache",
    port: Annotated[
        int, typer.Option(help="Local port of this SuperNode's app API (loopback only).")
    ] = 9094,
    max_retries: Annotated[
        int,
        typer.Option(
            help="Retry a failed connection to the SuperLink at most this many times "
            "(this many + 1 attempts), when starting and whenever it drops later; 0 = no "
            "limit. flower-supernode gets the same number (its --max-retries)."
        ),
    ] = 0,
    max_wait_time: Annotated[
        float,
        typer.Option(
            help="Stop retrying once this many seconds have passed since the first failed "
            "attempt; 0 = no limit. Waits double from 1 s to 20 s between attempts. "
            "flower-supernode gets the same number (its --max-wait-time)."
        ),
    ] = 0.0,
    check_only: Annotated[
        bool,
        typer.Option(
            help="Run the checks, try the SuperLink once, compare your labels with the "
            "federation's class list, print the summary, then stop (non-zero on a problem)."
        ),
    ] = False,
    allow_no_dp: Annotated[
        bool,
        typer.Option(
            help="Accept NON-PRIVATE rounds if a plan asks for them (off: they are refused)."
        ),
    ] = False,
    allow_evaluate: Annotated[
        bool,
        typer.Option(
            help="Answer the server's evaluate requests, with noise, charged to your budget "
            "(off: refused)."
        ),
    ] = False,
    evaluate_noise_multiplier: Annotated[
        float, typer.Option(help="Noise of a DP evaluate answer, relative to its sensitivity.")
    ] = 10.0,
    run_epsilon_cap: Annotated[
        float, typer.Option(help="Most epsilon one run may spend (0: the whole budget).")
    ] = 0.0,
    classes: Annotated[
        str,
        typer.Option(
            help="The class list you accept, comma-separated, in the federation's order; "
            "plans with another list are refused. Unset: the federation's published list, "
            "compared with your labels on this console only."
        ),
    ] = "",
    count_noise: Annotated[
        float,
        typer.Option(
            help="Std (in records) of the noise on your record count, which leaves only as "
            "this DP release, charged once per data version."
        ),
    ] = 20.0,
    public_record_count: Annotated[
        bool,
        typer.Option(
            help="Declare your record count public: it is sent as is, and your training is "
            "accounted under replace-one adjacency (sensitivity 2C), as your ledger says."
        ),
    ] = False,
    insecure: InsecureFlag = False,
) -> None:
    """Check your data and budget, then join the federation as an authenticated TLS SuperNode.

    Starts before the server too: the node waits for the SuperLink, printing each attempt
    (see --max-retries, --max-wait-time). Before joining it shows the federation's class
    list and refuses labels the federation lacks. Ctrl-C or SIGTERM stops it within a few
    seconds.

    Exit codes: 0 --check-only found no problem; 2 an input, data or class-list problem;
    3 budget; 4 ledger; 69 gave up reaching the SuperLink (at start or after it went away);
    77 the operator removed this node (the reason is printed); 130 / 143 stopped by SIGINT /
    SIGTERM; another non-zero: flower-supernode failed (the cause is printed).
    """
    options = dict(locals())  # the owner's settings: OwnerConfig's fields, by name
    from fedshield.client.node import exit_at_once, start_node
    from fedshield.client.node_settings import SuperNodeSettings, check_inputs
    from fedshield.client.stop_signals import interrupt_on_sigint
    from fedshield.common.config import OwnerConfig

    interrupt_on_sigint()
    owner = OwnerConfig.from_options(**options, data_path=data)
    settings = SuperNodeSettings(
        superlink=superlink,
        ca=ca,
        auth_key=auth_key,
        owner=owner,
        port=port,
        insecure=insecure,
        max_retries=max_retries,
        max_wait_time_s=max_wait_time,
    )
    check_inputs(settings)  # before the heavy imports of start_node: typos answer at once
    if insecure:
        warn_insecure()

    def say(line: str) -> None:  # markup off: paths, hints ('[finetune]'), server text
        console.print(line, highlight=False, markup=False)

    stop = start_node(settings, say, check_only=check_only)
    if stop is None:  # --check-only found no problem
        return
    say(f"fedshield: {stop.message}")
    exit_at_once(stop.exit_code)
