"""`caduceus secrets ...`: the key that encrypts the configuration's secrets."""

from __future__ import annotations

import typer
from cryptography.fernet import Fernet
from rich.console import Console

from caduceus.cli.settings import load_settings

app = typer.Typer(help="The key of the stored secrets.", no_args_is_help=True)
console = Console()
err = Console(stderr=True, soft_wrap=True)


@app.command("rotate-key")
def rotate_key() -> None:
    """Encrypt every configuration version's secrets with a new key, then drop the old one.

    The new key goes first into the key file, the old one stays until every version is
    encrypted again (in one transaction): an interruption leaves both keys, and running it
    again finishes. Copy the new key file to every other machine sharing the database."""
    from caduceus.core.config import store
    from caduceus.core.database import open_database
    from caduceus.core.secret_keys import Keyring, keys_in, write_key_file

    settings = load_settings()
    engine = open_database(settings, migrate=True, pool_size=1)
    try:
        path = settings.secrets_key_path
        old = keys_in(path)
        new = Fernet.generate_key()
        try:
            write_key_file(path, [new, *old])
        except OSError as exc:  # a read-only mount (a Kubernetes Secret): rotate where it lives
            err.print(f"error: cannot write the key file {path}: {exc.strerror}", markup=False)
            raise typer.Exit(1) from exc
        count = store.reencrypt_all(engine, Keyring(path))
        write_key_file(path, [new])
    finally:
        engine.dispose()
    console.print(
        f"{count} configuration versions encrypted with the new key in {path}; "
        "the old key is gone. Copy this file to every machine sharing the database.",
        highlight=False,
    )
