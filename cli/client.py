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
        int, typer.Option(help="Give up connecting after this many tries (0 = never).")
    ] = 0,
    check_only: Annotated[
        bool, typer.Option(help="Run the checks and print the summary, then stop.")
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
            "plans with another list are refused. Unset: your label set is treated as public."
        ),
    ] = "",
    insecure: InsecureFlag = False,
) -> None:
    """Check your data and budget, then join the federation as an authenticated TLS SuperNode."""
    from fedshield.client import deployment as dep
    from fedshield.common.config import OwnerConfig

    owner = OwnerConfig.from_dict(
        {
            "data-path": str(data),
            "text-column": text_column,
            "label-column": label_column,
            "epsilon-budget": epsilon_budget,
            "delta": delta,
            "ledger-dir": str(ledger_dir),
            "audit-dir": str(audit_dir),
            "owner-id": owner_id,
            "device": device,
            "cache-dir": cache_dir,
            "allow-no-dp": allow_no_dp,
            "allow-evaluate": allow_evaluate,
            "evaluate-noise-multiplier": evaluate_noise_multiplier,
            "run-epsilon-cap": run_epsilon_cap,
            "classes": classes,
        }
    )
    if insecure:
        warn_insecure()
    settings = dep.SuperNodeSettings(
        superlink=superlink,
        ca=ca,
        auth_key=auth_key,
        owner=owner,
        port=port,
        insecure=insecure,
        max_retries=max_retries,
    )
    ready = dep.check_before_connecting(settings)
    classes = ", ".join(f"{k}: {v}" for k, v in ready.dataset.class_counts().items())
    console.print(
        f"data {data}: {len(ready.dataset)} records, classes {{{classes}}}, fingerprint {ready.dataset.fingerprint}"
    )
    console.print(
        f"privacy budget: epsilon {epsilon_budget:g} at delta {delta:g}; spent {ready.epsilon_spent:.3f}; "
        f"left {epsilon_budget - ready.epsilon_spent:.3f} (ledger {Path(ledger_dir).expanduser()})"
    )
    console.print(
        f"node key {ready.node_key_fingerprint}; SuperLink {superlink}: {ready.transport}"
    )
    console.print(
        "your policy: "
        + ("NON-PRIVATE rounds accepted (--allow-no-dp)" if allow_no_dp else "DP required")
        + "; evaluate "
        + (
            f"allowed with DP (noise {evaluate_noise_multiplier:g})"
            if allow_evaluate
            else "refused"
        )
        + (f"; at most epsilon {run_epsilon_cap:g} per run" if run_epsilon_cap else "")
        + (f"; classes accepted: {classes}" if classes else ""),
        highlight=False,
        markup=False,
    )
    from fedshield.common import minilm
    from fedshield.common.model import resolve_device

    console.print(
        f"compute: {resolve_device(device)}; models: hashed, "
        + ("minilm" if minilm.is_installed() else f"not minilm ({minilm.INSTALL_HINT})"),
        markup=False,  # the hint's [finetune] is text, not a style
    )
    if check_only:
        return
    config = dep.node_config(settings, ready)
    dep.record_node_start(settings, ready, config)
    status = dep.run_supernode(
        settings, config, on_line=lambda line: console.print(line, highlight=False, markup=False)
    )
    if status != 0:
        raise typer.Exit(code=status)
