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
from fedshield.common.errors import FedshieldError

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
    classes: Annotated[
        str,
        typer.Option(
            help="The federation's classes, comma-separated, in the model's order (required; "
            "owners see this list before joining)."
        ),
    ] = "",
    eval_data: Annotated[
        Path | None,
        typer.Option(help="Your labelled evaluation file (CSV/JSONL/Parquet), used whole."),
    ] = None,
    text_column: Annotated[
        str, typer.Option(help="The evaluation file's text column (run config text-column).")
    ] = "text",
    label_column: Annotated[
        str, typer.Option(help="The evaluation file's label column (run config label-column).")
    ] = "label",
    continue_from: Annotated[
        str,
        typer.Option(
            help="Start from a finished run's model: its folder, or 'latest' (newest under "
            "STATE/runs). Public, so it costs the owners no budget."
        ),
    ] = "",
    class_descriptions: Annotated[
        str,
        typer.Option(
            help="Start the head as a zero-shot classifier: 'names' (each class described by "
            "its name) or your JSON file of public phrases per class (run config "
            "class-descriptions)."
        ),
    ] = "",
    run_config: Annotated[
        list[str] | None,
        typer.Option(help="key=value for the run (repeat), e.g. num-rounds=5 target-epsilon=1.0."),
    ] = None,
    run_timeout_s: Annotated[
        float, typer.Option(help="Give up on the run after this long.")
    ] = 7200.0,
    keep_running: Annotated[
        bool, typer.Option(help="Keep the SuperLink up after the run (Ctrl-C stops it).")
    ] = False,
    max_weight: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=RECORDS (repeat): the most an owner's update weighs in the average, "
            "NAME being its --node-key file's stem, e.g. owner-1=5000 (default 10000; an "
            "owner's own count is never trusted beyond it)."
        ),
    ] = None,
    insecure: InsecureFlag = False,
) -> None:
    """Start a TLS SuperLink with node authentication, register owners' keys, run the federation.

    Example: fedshield server start --node-key pki/owner-1.pub --node-key pki/owner-2.pub
    --classes business,sport,tech --eval-data eval.csv --run-config num-rounds=5

    Exit status: 0 when every planned round ran; 6 when no owner's update was accepted
    (nothing saved); 7 when the run stopped early because every owner refused for budget.
    """
    from fedshield.cli.shared import described_classes, require_file

    for key in node_key or []:
        require_file(key, "--node-key")
        if key.suffix != ".pub":
            raise FedshieldError(
                f"--node-key {key}: pass the owner's PUBLIC key (NAME.pub from `fedshield pki "
                "node NAME`), never a private key"
            )
    if not insecure:
        for name in ("ca.crt", "server.pem", "server.key"):
            require_file(pki / name, "--pki")
    if eval_data is not None:
        require_file(eval_data, "--eval-data")
    values = parse_key_values(run_config or [])
    max_weights = _max_weights(max_weight or [])
    for key, value in (
        ("classes", classes),
        ("eval-data", str(eval_data) if eval_data else ""),
        ("continue-from", continue_from),
        ("class-descriptions", described_classes(class_descriptions)),
    ):
        if value:
            values[key] = value
    for key, value, default in (
        ("text-column", text_column, "text"),
        ("label-column", label_column, "label"),
    ):
        if value != default or key not in values:  # an explicit flag wins over --run-config
            values[key] = value
    from fedshield.server.operator import FederationRequest, serve_federation
    from fedshield.server.superlink import SuperLinkSettings

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
        run_values=values,
        wait_nodes=wait_nodes,
        node_timeout_s=node_timeout_s,
        run_timeout_s=run_timeout_s,
        keep_running=keep_running,
        max_weights=max_weights,
    )
    out = serve_federation(settings, request, console.print)
    if (out / "metrics.json").exists():
        print_final(out)


def _max_weights(items: list[str]) -> dict[str, int]:
    """``--max-weight NAME=RECORDS`` items as a dict; a bad item names itself."""
    weights = {}
    for item in items:
        name, _, records = item.partition("=")
        if not name.strip() or not records.strip().isdigit() or int(records) < 1:
            raise FedshieldError(
                f"--max-weight {item!r}: give NAME=RECORDS, NAME the stem of a --node-key "
                "file and RECORDS a whole number >= 1, e.g. --max-weight owner-1=5000"
            )
        weights[name.strip()] = int(records)
    return weights
