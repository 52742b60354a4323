"""The services a role works with — settings, database, buffer, archive — opened once."""
from __future__ import annotations

from dataclasses import dataclass

from lib import config
from lib.db import connect
from lib.storage import Storage, open_storage


@dataclass
class Services:
    settings: config.Settings
    db: object                     # dataset.Database
    buffer: Storage
    archive: Storage

    @classmethod
    def open(cls, settings: config.Settings) -> "Services":
        """Connect to the database (creating the schema) and to both stores (creating buckets)."""
        services = cls(
            settings=settings,
            db=connect(settings.database_url),
            buffer=open_storage(settings.buffer_url, settings.buffer_credentials, role="buffer"),
            archive=open_storage(settings.archive_url, settings.archive_credentials, role="archive"),
        )
        services.buffer.ensure_ready()
        services.archive.ensure_ready()
        return services
