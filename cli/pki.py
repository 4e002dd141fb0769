"""``fedshield pki``: certificates and keys for a deployed federation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedshield.cli.shared import PkiDir, console

pki_app = typer.Typer(help="Certificates and keys for a deployed federation.", no_args_is_help=True)


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
    console.print(f"  fedshield server start ... --node-key {pub}")
