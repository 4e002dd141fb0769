"""``fedshield simulate``: a server plus simulated data owners on one machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedshield.cli.shared import (
    MaxRecordsPerUnitOption,
    PrivacyUnitOption,
    RecordLevelFlag,
    console,
    described_classes,
)
from fedshield.cli.simulate_run import run_with_progress
from fedshield.common.errors import FedshieldError

# common/data.py's BUILTIN_DATASETS, named here so a wrong path fails before pandas loads.
BUILTIN_DATA = ("imdb", "rotten-tomatoes", "movie-reviews")


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
    eval_data: Annotated[
        Path | None,
        typer.Option(
            help="Evaluate on this labelled file, whole, instead of a held-out slice of --data "
            "(the owners then train on all of --data)."
        ),
    ] = None,
    classes: Annotated[
        str,
        typer.Option(
            help="The class list, comma-separated, in the model's order (default: the sorted "
            "labels of the data)."
        ),
    ] = "",
    continue_from: Annotated[
        str,
        typer.Option(
            help="Start from the model of a finished run: its folder, or 'latest' (newest run "
            "with a model beside --out). Public, so it costs no privacy budget."
        ),
    ] = "",
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
    learning_rate: Annotated[
        float,
        typer.Option(help="Client SGD learning rate; 0 = 2.5 x the number of classes."),
    ] = 0.0,
    server_momentum: Annotated[
        float, typer.Option(help="Server momentum (FedAvgM); 0 = FedAvg.")
    ] = 0.9,
    aggregation: Annotated[
        str, typer.Option(help="fedavg, median or trimmed-mean (robust to outliers).")
    ] = "fedavg",
    ray_address: Annotated[
        str,
        typer.Option(
            envvar="RAY_ADDRESS",
            help="Run the owners on this existing Ray cluster (host:port of its head, or "
            "'auto'); its nodes must see --out and --data at the same paths.",
        ),
    ] = "",
    class_priors: Annotated[
        str,
        typer.Option(
            help="The head's starting bias is the log of these class priors: 'eval' (the "
            "evaluation data's class shares), 'uniform', or shares in class order."
        ),
    ] = "eval",
    train_bias: Annotated[
        bool, typer.Option(help="Owners train the head's bias too (default: they keep the priors).")
    ] = False,
    class_descriptions: Annotated[
        str,
        typer.Option(
            help="Start the head as a zero-shot classifier: 'names' (each class described "
            "by its name) or a JSON file of one or more public phrases per class; '' = a zero head."
        ),
    ] = "",
    privacy_unit: PrivacyUnitOption = "",
    max_records_per_unit: MaxRecordsPerUnitOption = 64,
    record_level: RecordLevelFlag = False,
    max_update_norm: Annotated[
        float,
        typer.Option(
            help="Reject updates farther than this (L2) from the global model (0: the "
            "default bound, 50 x learning rate x clipping norm per local step)."
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
            "0 (default): fit the wait to the owners: the first round 600 s (minilm: 3 h, "
            "it encodes every owner's texts), then 5 x the slowest reply seen (at least 120 s)."
        ),
    ] = 0.0,
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
    desensitise: Annotated[
        bool,
        typer.Option(
            help="Remove identifiers from every text before anything reads it, as deployed "
            "owners do by default (the owners' and the evaluation data alike)."
        ),
    ] = True,
    desensitise_policy: Annotated[
        str,
        typer.Option(
            help="The simulated owners' desensitisation policy (TOML; see "
            "docs/DESENSITISATION.md). '' = the default policy."
        ),
    ] = "",
) -> None:
    """Run the server plus simulated clients on this machine and report accuracy and epsilon.

    Exit status: 0 when every planned round ran; 6 when no owner's update was accepted (no
    model is saved); 7 when the run stopped early because every owner refused for budget.
    To spend a budget well, run once with all the rounds it allows, or continue a finished
    run's model with --continue-from (the rounds add up; the epsilon spent adds up too).
    """
    import time

    from fedshield.cli.shared import require_file
    from fedshield.common.config import RunConfig

    require_file(data, "--data", builtin=BUILTIN_DATA)
    if eval_data is not None:
        require_file(eval_data, "--eval-data")
    if resume:
        from fedshield.server.checkpoint import ServerCheckpoint

        if out is None:
            raise FedshieldError("--resume needs --out: the folder of the run to continue")
        checkpoint = ServerCheckpoint.load(out)
        config = RunConfig.from_dict({**checkpoint.config, "resume": True})
        console.print(
            f"Resuming {out} after round {checkpoint.server_round} of {config.num_rounds}"
        )
        run_with_progress(config, config.num_clients)
        return

    out_dir = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if ray_address:  # the cluster's nodes resolve paths from their own working folders
        out_dir = out_dir.resolve()
        data = data if data in BUILTIN_DATA else str(Path(data).resolve())
    if continue_from:
        from fedshield.server.outputs import resolve_continue_from

        parent = resolve_continue_from(continue_from, out_dir.parent)
        console.print(f"Starting from the model of {parent}")
        continue_from = str(parent.resolve())
    config = RunConfig.from_dict(
        {
            "num-rounds": rounds,
            "data": data,
            "eval-data": str(eval_data.resolve()) if eval_data else "",
            "classes": classes,
            "continue-from": continue_from,
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
            "class-priors": class_priors,
            "train-bias": train_bias,
            "class-descriptions": described_classes(class_descriptions),
            "privacy-unit": privacy_unit,
            "max-records-per-unit": max_records_per_unit,
            "record-level": record_level,
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
            "ray-address": ray_address,
            "desensitise": desensitise,
            "desensitise-policy": str(Path(desensitise_policy).resolve())
            if desensitise_policy
            else "",
        }
    )
    run_with_progress(config, clients)
