"""``fedshield server status`` and ``fedshield server remove-owner``: the operator's view
and control of a running federation (the work: server/status.py).

Registered on the ``server`` group by cli/app.py; inputs are checked before anything but
the standard library, typer and rich is imported, so a typo answers at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fedshield.cli.shared import console, require_file
from fedshield.common.errors import FedshieldError

StateDir = Annotated[
    Path,
    typer.Option(help="The --state folder of `fedshield server start`."),
]


def require_state_dir(state: Path) -> None:
    if not state.is_dir():
        raise FedshieldError(
            f"--state {state}: no such folder; pass the --state you gave `fedshield server start`"
        )
    if not any((state / name).exists() for name in ("owners.json", "superlink.db", "runs")):
        raise FedshieldError(
            f"--state {state}: not a fedshield server state folder (no owners.json, "
            "superlink.db or runs/); pass the --state you gave `fedshield server start`"
        )


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def server_status(
    state: StateDir = Path("fedshield-server"),
    run: Annotated[
        Path | None,
        typer.Option(help="The run folder (default: the newest under STATE/runs)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the same as JSON.")] = False,
) -> None:
    """Owners (names, key fingerprints, connected), the current run, epsilon spent and left."""
    require_state_dir(state)
    if run is not None:
        require_file(run / "metrics.json", "--run")
    from fedshield.server.status import federation_status

    view = federation_status(state, run)
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    superlink = view["superlink"]
    console.print(
        Text(
            f"SuperLink: {'running' if superlink['reachable'] else 'NOT RUNNING or not reachable'} "
            f"({superlink['detail']})",
            style="green" if superlink["reachable"] else "bold red",
        )
    )
    current = view["run"]
    if current is None:
        console.print(Text(f"No run yet under {state / 'runs'}."))
    else:
        accuracy = _number(current["last-accuracy"], 4)
        state_word = "finished" if current["finished"] else "in progress"
        if current["outcome"]:
            state_word += f" ({current['outcome']})"
        console.print(
            Text(
                f"Run {current['folder']}: {state_word}, round {current['rounds-done']} of "
                f"{current['rounds-planned'] or '?'}, last accuracy {accuracy}, macro F1 "
                f"{_number(current.get('last-macro-f1'), 4)}"
            )
        )
        if current.get("never-predicted"):
            console.print(
                Text(
                    "Warning: the model never predicts "
                    f"{', '.join(current['never-predicted'])} on the evaluation data; "
                    "the next run can start from a head that knows each class "
                    "(--class-descriptions FILE, with model='minilm')",
                    style="yellow",
                )
            )
    owners = Table(title="Data owners (node keys registered from this state folder)")
    owners.add_column("owner", overflow="fold")
    # An operator compares fingerprints character by character: never wrapped or cut.
    owners.add_column("node-key fingerprint", no_wrap=True, min_width=50)
    owners.add_column("node id", overflow="fold")
    owners.add_column("connection", overflow="fold")
    budgets = Table(
        title="Privacy budget per owner key (epsilon: every charge, train and evaluate, as "
        "the owner's ledger reported it in its newest anchored reply)"
    )
    budgets.add_column("owner")
    budgets.add_column("node-key fingerprint", no_wrap=True, min_width=50)
    budgets.add_column("label (self-declared)")
    for column in ("spent", "budget", "left"):
        budgets.add_column(column, justify="right")
    for owner in view["owners"]:
        connection = owner["connection"]
        if owner["removed"]:
            removed = owner["removed"]
            connection += f", removed {removed['time']}: {removed['reason']}"
        owners.add_row(
            *_cells(owner["name"], owner["fingerprint"], owner["node-id"] or "unknown", connection)
        )
        if owner["epsilon-spent"] is not None:
            budgets.add_row(
                *_cells(
                    owner["name"],
                    owner["fingerprint"],
                    owner["label-self-declared"],
                    *(
                        _number(owner[k])
                        for k in ("epsilon-spent", "epsilon-budget", "epsilon-left")
                    ),
                )
            )
    console.print(owners)
    console.print(budgets)


def _cells(*values) -> list[Text]:
    """Text cells: owners choose their labels and operators the reasons; never markup."""
    return [Text(str(value)) for value in values]


def server_remove_owner(
    node_key: Annotated[
        Path, typer.Option(help="The owner's public key (NAME.pub) registered with --node-key.")
    ],
    reason: Annotated[
        str, typer.Option(help="Why; the owner's client shows it (public: say nothing private).")
    ],
    state: StateDir = Path("fedshield-server"),
    node_id: Annotated[
        int | None,
        typer.Option(
            help="Only for a key this state folder has no node id for (flwr supernode ls)."
        ),
    ] = None,
) -> None:
    """Unregister an owner's node, after writing the notice (with the reason) it will see."""
    require_state_dir(state)
    require_file(node_key, "--node-key")
    head = node_key.read_bytes()[:4096].split()
    if not head or not head[0].startswith((b"ecdsa-sha2-", b"ssh-")) or len(head) < 2:
        private = bool(head) and head[0].startswith(b"-----BEGIN")
        what = "this is a private key" if private else "not an OpenSSH public key"
        raise FedshieldError(
            f"--node-key {node_key}: {what}; "
            "pass the owner's PUBLIC key (NAME.pub), the one given to `fedshield server start "
            "--node-key`"
        )
    reason = reason.strip()
    if not reason:
        raise FedshieldError('--reason is empty; say why the owner is removed, e.g. --reason "..."')
    if not reason.isprintable():
        raise FedshieldError(
            "--reason holds control characters (line breaks, escapes); the owner's terminal "
            "shows it: use one plain line"
        )
    from fedshield.server.status import remove_owner

    done = remove_owner(
        state, node_key, reason, node_id, say=lambda line: console.print(Text(line))
    )
    console.print(
        Text(
            f"Removed {done['name']} ({done['fingerprint']}, node {done['node-id']}) at "
            f"{done['time']}: {done['reason']}"
        ),
        style="bold",
    )
