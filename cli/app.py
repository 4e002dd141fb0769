"""The ``fedshield`` command: wires the command groups and maps errors to exit codes.

Every FedshieldError becomes one line on stderr and its exit code; a traceback only
with ``--debug``. Heavy imports (torch, Opacus, Flower) happen inside the commands so
that ``--help`` and input errors answer at once. One module per command group:

- ``simulate``  server plus simulated owners on one machine (cli/simulate.py)
- ``data``      check a data file (cli/data.py)
- ``ledger``    read an owner's privacy ledger (cli/ledger.py)
- ``audit``     verify logs, report on budgets (cli/audit.py)
- ``pki``       CA, server certificate, node keys (cli/pki.py)
- ``server``    the operator's deployed SuperLink (cli/server.py)
- ``client``    a data owner's deployed SuperNode (cli/client.py), its key rotation
  (cli/keys.py)
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer
from rich.markup import escape

from fedshield.cli.audit import audit_app
from fedshield.cli.client import client_app
from fedshield.cli.data import data_app
from fedshield.cli.keys import client_rotate_key
from fedshield.cli.ledger import ledger_app
from fedshield.cli.pki import pki_app
from fedshield.cli.predict import evaluate, predict
from fedshield.cli.server import server_app
from fedshield.cli.server_admin import server_remove_owner, server_status
from fedshield.cli.shared import err_console, state
from fedshield.cli.simulate import simulate
from fedshield.common.errors import FedshieldError

app = typer.Typer(
    name="fedshield",
    help="Federated text classification with differential privacy (Flower + Opacus).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(simulate)
app.command()(predict)
app.command()(evaluate)
server_app.command("status")(server_status)
server_app.command("remove-owner")(server_remove_owner)
client_app.command("rotate-key")(client_rotate_key)
for group, name in (
    (data_app, "data"),
    (ledger_app, "ledger"),
    (audit_app, "audit"),
    (pki_app, "pki"),
    (server_app, "server"),
    (client_app, "client"),
):
    app.add_typer(group, name=name)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and Flower's logs.")
    ] = False,
) -> None:
    state["debug"] = debug


def main() -> None:
    # SIGTERM becomes SystemExit, so that `finally` blocks stop the Flower processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        app()
    except FedshieldError as exc:
        if state["debug"]:
            raise
        # Escaped: a message quotes paths and commands ('fedshield[finetune]') verbatim.
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
