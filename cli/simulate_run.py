"""A simulation as the terminal shows it: the checks and what the run will do, the
owners' preparation, then one line per round, the round table and the final figures.

``fedshield simulate`` and ``fedshield audit empirical`` both run through here."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from fedshield.cli.shared import console, print_final, quiet_libraries


def _prepare_owners_first(config, clients: int, records: int) -> None:
    """simulation/prepare.py's work before round 1, with a progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedshield.simulation.prepare import prepare_owners

    steps = (["desensitising"] if config.desensitise else []) + (
        ["encoding (MiniLM)"] if config.model == "minilm" else []
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} owners"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"{' and '.join(steps)}, once per owner", total=clients)
        prepare_owners(config, clients, records, lambda: progress.advance(task))


def run_with_progress(config, clients: int, on_update=None) -> None:
    """Check the inputs, say what will run, prepare the owners, run every round."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedshield.simulation.engine import check_inputs

    sizes, held_out = check_inputs(config, clients)
    if config.continue_from:
        from fedshield.common.simulation_split import class_names
        from fedshield.server.outputs import check_continuation

        check_continuation(config, class_names(config))
    if config.dp:
        mode = (
            f"DP-SGD, target epsilon {config.target_epsilon:g} per client this run, "
            f"budget {config.epsilon_budget or config.target_epsilon:g}"
            if config.noise_multiplier <= 0
            else f"DP-SGD, noise multiplier {config.noise_multiplier:g}, budget {config.epsilon_budget:g}"
        )
        console.print(f"[bold green]Private run[/]: {mode}, delta {config.delta:g}")
        console.print(_unit_line(config), highlight=False)
    else:
        console.print(
            "[bold red]NON-PRIVATE BASELINE (--no-dp): no clipping, no noise; "
            "updates carry no privacy guarantee.[/]"
        )
    console.print(
        f"Data {config.data}: {sum(sizes)} training records over {clients} clients "
        f"({config.partition}{f', alpha {config.alpha:g}' if config.partition == 'dirichlet' else ''}; "
        f"sizes {min(sizes)}-{max(sizes)}), {held_out} held out for evaluation. Output: {config.out_dir}"
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
    if config.desensitise and config.desensitise_policy:
        from fedshield.common.desensitise_policy import DesensitisePolicy

        DesensitisePolicy.from_file(config.desensitise_policy)  # a bad file answers now
    if config.model == "minilm" or config.desensitise:
        _prepare_owners_first(config, clients, records=sum(sizes) + held_out)
    table = Table(
        "round", "accuracy", "macro F1", "loss", "max epsilon", "clients", "refused", title=None
    )
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
                f"{entry['macro-f1']:.4f}",
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
                        ("round", "acc", "macro-f1", "loss", "max-eps", "clients", "refused"),
                        row,
                        strict=True,
                    )
                )
            )
            if entry.get("late"):
                progress.console.print(
                    f"  round {entry['round']}: no reply in time from "
                    + ", ".join(entry["late"])
                    + " (their updates were dropped; raise --round-timeout-s)",
                    markup=False,
                    highlight=False,
                )
            if entry["round"] > 0:
                progress.update(task, completed=entry["round"])

        quiet_libraries()
        from fedshield.simulation.engine import run_simulation

        run_simulation(config, clients, on_round, on_update)
    console.print(table)
    print_final(Path(config.out_dir))


def _unit_line(config) -> str:
    """What epsilon protects in this run (the simulated owners' privacy unit)."""
    unit = config.privacy_unit
    if not unit:
        return "Epsilon protects one record (--privacy-unit COLUMN protects a person)."
    if config.record_level:
        return (
            f"Epsilon protects one record (--record-level) on data with units '{unit}': each "
            "owner's audit log warns what that means for its largest unit."
        )
    return (
        f"Epsilon protects one '{unit}', all its records together (at most "
        f"{config.max_records_per_unit} of them train a round); owners hold whole units."
    )
