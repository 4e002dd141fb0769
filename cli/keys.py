"""``fedshield client rotate-key``: a new at-rest key, and every sealed file under it.

Registered on the ``client`` group by cli/app.py. The keys and the sealing are
common/owner_keys.py and common/sealed.py; this module finds the owner's sealed files
(the cache of encodings and desensitised texts, the releases kept beside the ledger)
and prints what was done.
Crash-safe: run again after an interruption, it finishes the same rotation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedshield.cli.shared import console
from fedshield.common.errors import ConfigError


def client_rotate_key(
    key_dir: Annotated[
        Path, typer.Option(help="Your key folder (the --key-dir of `fedshield client start`).")
    ] = Path("~/.fedshield/keys"),
    cache_dir: Annotated[
        str,
        typer.Option(help="Your cache folder (the --cache-dir of `client start`); '' = none."),
    ] = "~/.fedshield/cache",
    ledger_dir: Annotated[
        Path,
        typer.Option(help="Your ledger folder (the --ledger-dir of `client start`)."),
    ] = Path("~/.fedshield/ledgers"),
) -> None:
    """Replace your at-rest key and re-seal your cache and kept releases under the new one.

    Stop your node first (refused while it runs). The pseudonym key is kept: pseudonyms stay the same. Files that
    neither key opens are left alone (the node rebuilds such a cache and never reuses
    such a release).
    """
    from fedshield.common import owner_keys, sealed
    from fedshield.common.key_folder_lock import rotation_owns_keys

    folders = [ledger_dir.expanduser()] + ([Path(cache_dir).expanduser()] if cache_dir else [])
    for folder in folders:
        if not folder.is_dir():
            # Refused before rotating: files in a mistyped folder would stay under the
            # old key, and that key is deleted at the end.
            raise ConfigError(
                f"{folder}: no such folder; pass the folders you gave `fedshield client start`"
            )
    files = _sealed_files(folders[0], folders[1] if cache_dir else None)

    def say(line: str) -> None:  # markup off: paths are printed verbatim
        console.print(line, highlight=False, markup=False)

    def reseal_under_current_key() -> sealed.ResealCounts:
        counts = sealed.reseal_files(
            files,
            owner_keys.open_previous_keys(key_dir),
            owner_keys.open_owner_keys(key_dir, create=False),
        )
        owner_keys.finish_rotation(key_dir)
        return counts

    with rotation_owns_keys(key_dir):  # refused while a node runs
        if owner_keys.open_previous_keys(key_dir) is not None:
            # An interrupted rotation: finished first, then the rotation asked for now
            # (the owner may rotate because the current key leaked: it must not stay).
            reseal_under_current_key()
            say("finished an interrupted rotation first")
        old_id, new_id = owner_keys.rotate_at_rest_key(key_dir)
        counts = reseal_under_current_key()

    say(f"at-rest key {old_id} -> {new_id} in {key_dir.expanduser()} (pseudonym key kept)")
    say(f"re-sealed {counts.resealed} file(s); {counts.already} already under the new key")
    if counts.unreadable:
        say(
            f"left alone, neither key opens them ({len(counts.unreadable)}): the node "
            "rebuilds such a cache and never reuses such a release; you may delete them"
        )
        for path in counts.unreadable:
            say(f"  {path}")


def _sealed_files(ledger_dir: Path, cache_dir: Path | None) -> list[tuple[Path, str]]:
    """The owner's sealed files, each with the purpose it is sealed for (names as
    client/releases.py, client/owner.py and common/desensitised_data.py write them)."""
    from fedshield.common import sealed

    # Under the ledger folder; a simulation's keeps one ledger folder per owner.
    files = [
        (path, sealed.RELEASED_UPDATE) for path in sorted(ledger_dir.glob("**/*.releases/*.pt"))
    ]
    caches = {"encoded-*": sealed.ENCODED_RECORDS, "desensitised-*": sealed.DESENSITISED_TEXT}
    for pattern, purpose in caches.items() if cache_dir else ():
        files += [(path, purpose) for path in sorted(cache_dir.glob(pattern))]
    return files
