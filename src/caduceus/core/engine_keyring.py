"""The key of the configuration's secrets, carried on the database engine.

open_database attaches it and the configuration store finds it there; both import this
module, not each other.
"""

from __future__ import annotations

from sqlalchemy import Engine

from caduceus.core.secret_keys import Keyring

KEYRING_OPTION = "caduceus_keyring"


def attach_keyring(engine: Engine, keyring: Keyring) -> None:
    """The configuration store finds the key on the engine (engines derived later too)."""
    engine.update_execution_options(**{KEYRING_OPTION: keyring})


def keyring_of(engine: Engine) -> Keyring | None:
    keyring = engine.get_execution_options().get(KEYRING_OPTION)
    return keyring if isinstance(keyring, Keyring) else None
