"""``signerd state migrate``: apply the pending schema steps to the state a URL names.

The versions and their steps are in ``signer.storage.schema`` (shared) and each
backend's ``schema`` module (its SQL); this module sits on top of both and is imported
by neither. A state at version N is migrated by running the steps after N, in order,
each in one transaction with the version it reaches (a crash leaves the last version
reached).

The daemon applies pending steps itself when it opens its state (a fresh state is
created at the latest version) and refuses a state whose version is newer than it knows:
the state was migrated by a newer signerd, whose tables this one may misread.
``signerd state migrate`` applies them on demand (before a rolling upgrade of replicas,
or as a database role allowed to change the schema when the daemon's is not) and says
what it did.
"""

from __future__ import annotations

from pathlib import Path

from signer.errors import ConfigError
from signer.storage.schema import STEPS, VERSION, NewerSchema, Report, describe
from signer.storage.sqlite import schema as sqlite_schema

__all__ = ["STEPS", "VERSION", "NewerSchema", "Report", "describe", "migrate_state"]


def migrate_state(url: str, password: str | None = None) -> Report:
    """Apply the pending steps to the state ``url`` names (``sqlite:///DIR`` or
    ``postgresql://...``): what was found and done (nothing when it is current)."""
    if url.startswith(("postgresql://", "postgres://")):
        # Here, not above: migrating SQLite state never loads the PostgreSQL driver.
        from signer.storage.postgresql import schema as pg_schema
        from signer.storage.postgresql.db import Database

        db = Database(url, password, max_size=1)
        try:
            return db.run(lambda conn: pg_schema.prepare(conn, db.where))
        finally:
            db.close()
    if url.startswith("sqlite://") and url[len("sqlite://") :].startswith("/"):
        return sqlite_schema.prepare(Path(url[len("sqlite://") :]))
    raise ConfigError(f"state {url!r}: use postgresql://... or sqlite:///PATH/TO/STATE_DIR")
