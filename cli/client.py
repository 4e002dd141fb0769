"""``fedshield client``: a data owner's side of a deployed federation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args, get_type_hints

import typer

from fedshield.cli.shared import (
    InsecureFlag,
    MaxRecordsPerUnitOption,
    PrivacyUnitOption,
    RecordLevelFlag,
    console,
    require_file,
    warn_insecure,
)
from fedshield.common.errors import ConfigError

client_app = typer.Typer(help="A data owner's side of a deployed federation.", no_args_is_help=True)


@client_app.command("start")
def client_start(
    ctx: typer.Context,
    superlink: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of the federation's SuperLink. Required (or in --config)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Your data file (CSV, JSON Lines or Parquet). It never leaves. Required "
            "(or in --config)."
        ),
    ] = None,
    epsilon_budget: Annotated[
        float | None,
        typer.Option(
            help="Your total privacy budget for this data, across runs. Required (or in --config)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Your settings as a TOML file (mode 0600): this command's options as "
            'kebab-case keys, e.g. data = "owner.csv", epsilon-budget = 3, '
            'desensitise-policy = "policy.toml". An option given on the command line wins '
            "over the file. Keeps your data path and policy out of `ps`."
        ),
    ] = None,
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
            help="Where what is derived from your text is kept between rounds: the "
            "desensitised texts and MiniLM encodings, sealed under your at-rest key (0600). "
            "'' = recompute every round."
        ),
    ] = "~/.fedshield/cache",
    key_dir: Annotated[
        Path,
        typer.Option(
            help="Your keys: the one that encrypts what fedshield keeps derived from your "
            "text, and your pseudonym key. Created on first start (0600, folder 0700)."
        ),
    ] = Path("~/.fedshield/keys"),
    desensitise: Annotated[
        bool,
        typer.Option(
            help="Remove identifiers from your text before anything reads it (the policy's "
            "entity types; default: e-mail, phone, URL, IP, card, IBAN, national ids, dates)."
        ),
    ] = True,
    desensitise_policy: Annotated[
        str,
        typer.Option(
            help="Your desensitisation policy (TOML: entity types and an operator per type; "
            "see docs/DESENSITISATION.md). '' = the default policy."
        ),
    ] = "",
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
    privacy_unit: PrivacyUnitOption = "",
    max_records_per_unit: MaxRecordsPerUnitOption = 64,
    record_level: RecordLevelFlag = False,
    insecure: InsecureFlag = False,
) -> None:
    """Check your data and budget, then join the federation as an authenticated TLS SuperNode.

    Starts before the server too: the node waits for the SuperLink, printing each attempt
    (see --max-retries, --max-wait-time). Before joining it shows the federation's class
    list and refuses labels the federation lacks. Ctrl-C or SIGTERM stops it within a few
    seconds.

    Put your settings in a 0600 file with --config so that ps shows no path or policy.

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

    if config is not None:
        options = with_config_file(ctx, options, config)
    require_options(options, REQUIRED_OPTIONS)
    interrupt_on_sigint()
    owner = OwnerConfig.from_options(**options, data_path=options["data"])
    settings = SuperNodeSettings(
        superlink=options["superlink"],
        ca=options["ca"],
        auth_key=options["auth_key"],
        owner=owner,
        port=options["port"],
        insecure=options["insecure"],
        max_retries=options["max_retries"],
        max_wait_time_s=options["max_wait_time"],
    )
    check_inputs(settings)  # before the heavy imports of start_node: typos answer at once
    if settings.insecure:
        warn_insecure()

    def say(line: str) -> None:  # markup off: paths, hints ('[finetune]'), server text
        console.print(line, highlight=False, markup=False)

    stop = start_node(settings, say, check_only=options["check_only"])
    if stop is None:  # --check-only found no problem
        return
    say(f"fedshield: {stop.message}")
    exit_at_once(stop.exit_code)


# Required, but from the command line or --config: typer cannot require either of two.
REQUIRED_OPTIONS = ("superlink", "data", "epsilon_budget")
_TOML_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def with_config_file(ctx: typer.Context, options: dict[str, Any], path: Path) -> dict[str, Any]:
    """``options`` with the values of the TOML file ``path`` for every option not given on
    the command line (a flag given there wins). Keys are the options' names, kebab-case."""
    import tomllib

    from click.core import ParameterSource

    from fedshield.common.owner_keys import check_private

    path = path.expanduser()
    require_file(path, "--config")
    # It names the owner's data and policy, which is why it is not the command line: a
    # file others can read would give away what `ps` no longer shows.
    check_private(path, "--config")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--config {path}: not a TOML file ({exc}); write one setting a line, e.g. "
            "epsilon-budget = 3"
        ) from exc
    names = {
        param.opts[0].removeprefix("--"): param.name
        for param in ctx.command.params
        if param.name not in ("config", None) and param.opts[0].startswith("--")
    }
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"--config {path}: unknown key(s) {', '.join(unknown)}; known keys (the "
            f"options of `client start`, kebab-case): {', '.join(sorted(names))}"
        )
    hints = get_type_hints(client_start)
    filled = dict(options)
    for key, value in values.items():
        name = names[key]
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            filled[name] = _file_value(path, key, value, hints[name])
    return filled


def _file_value(path: Path, key: str, value: Any, hint: Any) -> Any:
    """The file's ``value`` as the option's type; a path's ``~`` is expanded, as a shell
    would have on the command line."""
    (kind,) = [t for t in get_args(hint) or (hint,) if t is not type(None)]
    if kind is bool:
        fits = isinstance(value, bool)
    elif kind in (int, float):
        fits = isinstance(value, int | float) and not isinstance(value, bool)
        fits = fits and (kind is float or isinstance(value, int))
    else:
        fits = isinstance(value, str)
    if not fits:
        expected = "a path (a string)" if kind is Path else _TOML_KINDS[kind]
        raise ConfigError(
            f"--config {path}: {key} = {value!r}: expected {expected}, as --{key} takes"
        )
    return Path(value).expanduser() if kind is Path else kind(value)


def require_options(options: dict[str, Any], required: tuple[str, ...]) -> None:
    missing = [f"--{name.replace('_', '-')}" for name in required if options[name] is None]
    if missing:
        keys = ", ".join(m.removeprefix("--") for m in missing)
        raise ConfigError(
            f"missing {', '.join(missing)}: give each on the command line, or as {keys} in "
            "the file of --config"
        )
