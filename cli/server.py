"""``fedshield server``: the operator's side of a deployed federation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedshield.cli.shared import (
    InsecureFlag,
    console,
    parse_key_values,
    print_final,
    warn_insecure,
)

server_app = typer.Typer(help="The operator's side of a deployed federation.", no_args_is_help=True)


@server_app.command("start")
def server_start(
    pki: Annotated[Path, typer.Option(help="Folder with ca.crt, server.pem, server.key.")] = Path(
        "pki"
    ),
    state: Annotated[
        Path, typer.Option(help="Folder for the SuperLink database, logs and runs.")
    ] = Path("fedshield-server"),
    host: Annotated[
        str, typer.Option(help="Address the owners' Fleet gateway listens on.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(help="Public port owners dial: fedshield's Fleet-only TLS gateway."),
    ] = 9092,
    internal_port: Annotated[
        int,
        typer.Option(
            help="The SuperLink's own port on 127.0.0.1 (Control API: operator only; "
            "reach it remotely with an SSH port forward)."
        ),
    ] = 9093,
    node_key: Annotated[
        list[Path] | None, typer.Option(help="A data owner's .pub key to register (repeat).")
    ] = None,
    wait_nodes: Annotated[
        int | None, typer.Option(help="Nodes to wait for before the run (default: keys given).")
    ] = None,
    node_timeout_s: Annotated[float, typer.Option(help="How long to wait for the nodes.")] = 300.0,
    run_config: Annotated[
        list[str] | None,
        typer.Option(help="key=value for the run (repeat), e.g. num-rounds=5 data=eval.csv."),
    ] = None,
    run_timeout_s: Annotated[
        float, typer.Option(help="Give up on the run after this long.")
    ] = 7200.0,
    keep_running: Annotated[
        bool, typer.Option(help="Keep the SuperLink up after the run (Ctrl-C stops it).")
    ] = False,
    insecure: InsecureFlag = False,
) -> None:
    """Start a TLS SuperLink with node authentication, register owners' keys, run the federation."""
    from fedshield.server.deployment import SuperLinkSettings
    from fedshield.server.operator import FederationRequest, serve_federation

    if insecure:
        warn_insecure()
    settings = SuperLinkSettings(
        pki_dir=pki,
        state_dir=state,
        host=host,
        port=port,
        insecure=insecure,
        internal_port=internal_port,
    )
    request = FederationRequest(
        node_keys=list(node_key or []),
        run_values=parse_key_values(run_config or []),
        wait_nodes=wait_nodes,
        node_timeout_s=node_timeout_s,
        run_timeout_s=run_timeout_s,
        keep_running=keep_running,
    )
    out = serve_federation(settings, request, console.print)
    if (out / "metrics.json").exists():
        print_final(out)
