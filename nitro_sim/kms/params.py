"""Typed access to the members of an AWS JSON request, validated at the boundary."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any


class KmsError(Exception):
    """An error answered to the client as `{"__type": code, "message": message}`."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def validation(message: str) -> KmsError:
    return KmsError("ValidationException", message)


MAX_CONTEXT_PAIRS = 64
MAX_CONTEXT_BYTES = 8192


class Params:
    """The request's JSON object; every getter checks the member's type and bounds."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def _get(self, name: str, required: bool) -> Any:
        value = self.raw.get(name)
        if value is None and required:
            raise validation(
                f"1 validation error detected: Value null at '{name}' failed to satisfy "
                "constraint: Member must not be null"
            )
        return value

    def string(self, name: str, *, required: bool = False, max_len: int = 2048) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str) or not 1 <= len(value) <= max_len:
            raise validation(f"'{name}' must be a string of 1..{max_len} characters")
        return value

    def required_string(self, name: str, *, max_len: int = 2048) -> str:
        value = self.string(name, required=True, max_len=max_len)
        assert value is not None  # noqa: S101 - guaranteed by required=True
        return value

    def choice(
        self, name: str, allowed: tuple[str, ...], *, default: str | None = None
    ) -> str | None:
        value = self.string(name, max_len=64)
        if value is None:
            return default
        if value not in allowed:
            raise validation(f"'{name}' must be one of {', '.join(allowed)} in this simulator")
        return value

    def integer(self, name: str, low: int, high: int, *, required: bool = False) -> int | None:
        value = self._get(name, required)
        if value is None:
            return None
        if type(value) is not int or not low <= value <= high:
            raise validation(f"'{name}' must be an integer in {low}..{high}")
        return value

    def boolean(self, name: str) -> bool:
        value = self.raw.get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise validation(f"'{name}' must be a boolean")
        return value

    def blob(self, name: str, *, max_len: int, required: bool = False) -> bytes | None:
        return decode_blob(self._get(name, required), name, max_len)

    def required_blob(self, name: str, *, max_len: int) -> bytes:
        value = self.blob(name, max_len=max_len, required=True)
        assert value is not None  # noqa: S101 - guaranteed by required=True
        return value

    def string_list(self, name: str, *, max_items: int = 10) -> list[str]:
        value = self.raw.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > max_items:
            raise validation(f"'{name}' must be a list of at most {max_items} strings")
        if not all(isinstance(v, str) and 1 <= len(v) <= 8192 for v in value):
            raise validation(f"'{name}' must be a list of strings")
        return list(value)

    def encryption_context(self) -> dict[str, str]:
        value = self.raw.get("EncryptionContext")
        if value is None:
            return {}
        if not isinstance(value, dict) or len(value) > MAX_CONTEXT_PAIRS:
            raise validation("'EncryptionContext' must be a map of strings")
        total = 0
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, str) or not key:
                raise validation("'EncryptionContext' must map non-empty strings to strings")
            total += len(key.encode("utf-8")) + len(item.encode("utf-8"))
        if total > MAX_CONTEXT_BYTES:
            raise validation("'EncryptionContext' exceeds 8192 bytes")
        return dict(value)

    def structure(self, name: str) -> Params | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise validation(f"'{name}' must be a structure")
        return Params(value)


def decode_blob(value: Any, name: str, max_len: int) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 4 * (max_len + 2) // 3 + 4:
        raise validation(f"'{name}' must be a base64 blob of at most {max_len} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KmsError("SerializationException", f"'{name}' is not valid base64") from None
    if not 1 <= len(data) <= max_len:
        raise validation(f"'{name}' must hold 1..{max_len} bytes")
    return data


def encode_blob(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
