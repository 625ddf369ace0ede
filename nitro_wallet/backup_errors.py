"""The one error type of backup, restore and verify-backup, with stable codes.

Codes are printed by the CLI and matched by runbooks and alerting: never rename one,
only add. Messages name files, counts and record ids, never record contents beyond
the account id and address (both public).
"""

from __future__ import annotations

from enum import StrEnum


class BackupCode(StrEnum):
    #: The configured store is not SQLite (DynamoDB fleets use PITR and on-demand backups).
    UNSUPPORTED_BACKEND = "unsupported_backend"
    #: The store or the backup file does not exist or cannot be read or written.
    IO_ERROR = "io_error"
    #: Run as the store's owner: SQLite may create -wal/-shm files the relay cannot open.
    WRONG_USER = "wrong_user"
    #: The store stayed locked (or busy) for the whole timeout.
    STORE_BUSY = "store_busy"
    #: Not an SQLite database, or SQLite's integrity check failed.
    NOT_A_STORE = "not_a_store"
    #: The schema version or the table layout is not the one this tool knows.
    SCHEMA_MISMATCH = "schema_mismatch"
    #: A record has the wrong shape (the message names the first one).
    BAD_RECORD = "bad_record"
    #: The backup does not match its manifest (checksum or count).
    MANIFEST_MISMATCH = "manifest_mismatch"
    #: Restore would overwrite a store that holds accounts (pass --force).
    STORE_NOT_EMPTY = "store_not_empty"
    #: An S3 call failed (the message names the operation and the AWS error code).
    S3_ERROR = "s3_error"


class BackupError(Exception):
    def __init__(self, code: BackupCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
