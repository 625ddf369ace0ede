"""The OpenAPI 3.1 description of the relay's HTTP API, served at ``/openapi.json``.

Every operation but the probes, the metrics and this document requires a bearer token or
a stamp (``securitySchemes``; docs/api.md "Authentication")."""

from __future__ import annotations

from typing import Any

from enclave_app.errors import ErrorCode
from parent_app import __version__
from parent_app.errors import RelayCode
from parent_app.openapi_transactions import (
    ADDRESS,
    HEX,
    UNSIGNED_AUTHORIZATION,
    transaction_schemas,
)
from parent_app.readiness import OPENAPI_SCHEMA as READINESS_SCHEMA

_UUID = {
    "type": "string",
    "format": "uuid",
    "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{description}"}


_ACCOUNT_ID_PARAM = {
    "name": "account_id",
    "in": "path",
    "required": True,
    "schema": _UUID,
}


def _signing_path(
    operation: str,
    summary: str,
    request: str,
    result: str,
    errors: dict[str, Any],
) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation,
            "summary": summary,
            "parameters": [_ACCOUNT_ID_PARAM],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(request)}},
            },
            "responses": {
                "200": _json(_ref(result), "signed"),
                "404": _error("NotFound"),
                **errors,
            },
        }
    }


#: Operations anyone may call (parent_app.routes: ``authenticated=False``).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "a token from `nitro-wallet token add`: checked by the relay, "
        "trusted by the enclave only as far as the signing policy names its identity",
    },
    "stamp": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Stamp",
        "description": "the exact request signed with an API key (`nitro-wallet stamp`); "
        "verified in the enclave",
    },
}
_LABELS = {
    "type": "array",
    "maxItems": 16,
    "items": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"},
}
_BOUND_KEYS = {
    "type": "array",
    "maxItems": 16,
    "items": {
        "type": "object",
        "required": ["id", "public_key", "scopes"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "public_key": {"type": "string", "description": "PEM SubjectPublicKeyInfo"},
            "scopes": {"type": "array", "items": {"enum": ["create", "sign", "read"]}},
        },
    },
}


def _secured(paths: dict[str, Any]) -> None:
    """Open paths say so (``security: []``); every other operation may answer 401 (no or
    bad credentials) and 403 (a scope or the signing policy refuses)."""
    for path, operations in paths.items():
        for operation in operations.values():
            if path in OPEN_PATHS:
                operation["security"] = []
                continue
            operation["responses"].setdefault("401", _error("Unauthorized"))
            operation["responses"].setdefault("403", _error("Forbidden"))


def build_openapi() -> dict[str, Any]:
    error_codes = sorted({str(c) for c in RelayCode} | {str(c) for c in ErrorCode})
    schemas: dict[str, Any] = {
        **transaction_schemas(),
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": error_codes},
                        "message": {"type": "string"},
                    },
                }
            },
        },
        "CreateAccountRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"account_id": _UUID, "labels": _LABELS, "stamp_keys": _BOUND_KEYS},
        },
        "CreatedAccount": {
            "type": "object",
            "required": ["account_id", "address"],
            "properties": {"account_id": _UUID, "address": ADDRESS},
        },
        "Account": {
            "type": "object",
            "required": ["account_id", "address", "key_id", "created_at"],
            "properties": {
                "account_id": _UUID,
                "address": ADDRESS,
                "key_id": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "labels": _LABELS,
                "stamp_keys": _BOUND_KEYS,
                "created_by": {
                    "type": "string",
                    "description": "stamp:<key id> or relay:<token name>, sealed by the enclave",
                },
            },
        },
        "AuditHead": {
            "type": "object",
            "required": ["seg", "n", "hash", "nonce", "sig"],
            "properties": {
                "seg": {"type": "string", "description": "the enclave's receipt segment"},
                "n": {"type": "integer", "description": "counter of the sealed head"},
                "hash": {"type": "string"},
                "nonce": {"type": "string"},
                "sig": {"type": "string", "description": "Ed25519, the attested receipt key"},
            },
        },
        "AccountList": {
            "type": "object",
            "required": ["accounts", "next_cursor"],
            "properties": {
                "accounts": {"type": "array", "items": _ref("Account")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "SignTransactionRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["transaction"],
            "properties": {
                "transaction": _ref("Transaction"),
            },
        },
        "SignedTransaction": {
            "type": "object",
            "required": ["raw_transaction", "hash"],
            "properties": {"raw_transaction": HEX, "hash": HEX},
        },
        "SignTransactionsRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["transactions"],
            "properties": {
                "transactions": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 100,
                    "items": _ref("Transaction"),
                    "description": "Transactions as in SignTransactionRequest, all signed by "
                    "the path's account, sent to the enclave as one sign_batch frame.",
                }
            },
        },
        "SignedTransactions": {
            "type": "object",
            "required": ["results"],
            "properties": {
                "results": {
                    "type": "array",
                    "description": "One entry per transaction, in request order: the signed "
                    "transaction, or the error of that transaction alone.",
                    "items": {"oneOf": [_ref("SignedTransaction"), _ref("Error")]},
                }
            },
        },
        "SignMessageRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["message"],
            "properties": {
                "message": {
                    "type": "string",
                    "description": "EIP-191 (personal_sign) message: a 0x-prefixed string is "
                    "hex bytes (even length); anything else is signed as its UTF-8 text.",
                }
            },
        },
        "SignTypedDataRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["typed_data"],
            "properties": {
                "typed_data": {
                    "type": "object",
                    "required": ["types", "primaryType", "domain", "message"],
                    "description": "EIP-712 v4 typed data (as eth_signTypedData_v4).",
                }
            },
        },
        "Signature": {
            "type": "object",
            "required": ["signature", "digest"],
            "properties": {
                "signature": {
                    "type": "string",
                    "pattern": "^0x[0-9a-fA-F]{130}$",
                    "description": "65 bytes r || s || v, v = 27 or 28",
                },
                "digest": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"},
            },
        },
        "SignAuthorizationRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["authorization"],
            "properties": {
                "authorization": UNSIGNED_AUTHORIZATION,
            },
        },
        "SignedAuthorization": {
            "type": "object",
            "required": ["authorization"],
            "properties": {
                "authorization": {
                    "type": "object",
                    "required": ["chainId", "address", "nonce", "yParity", "r", "s"],
                    "properties": {
                        "chainId": HEX,
                        "address": ADDRESS,
                        "nonce": HEX,
                        "yParity": HEX,
                        "r": HEX,
                        "s": HEX,
                    },
                }
            },
        },
        "Attestation": {
            "type": "object",
            "required": ["attestation_document"],
            "properties": {
                "attestation_document": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "description": "COSE_Sign1 (ES384) Nitro attestation document",
                }
            },
        },
        "JsonRpcRequest": {
            "type": "object",
            "required": ["jsonrpc", "method"],
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {"type": ["string", "integer", "null"]},
                "method": {
                    "type": "string",
                    "examples": [
                        "eth_accounts",
                        "eth_signTransaction",
                        "eth_sign",
                        "personal_sign",
                        "eth_signTypedData_v4",
                        "eth_chainId",
                        "net_version",
                    ],
                },
                "params": {"type": "array"},
            },
        },
        "JsonRpcResponse": {
            "type": "object",
            "required": ["jsonrpc", "id"],
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {"type": ["string", "integer", "null"]},
                "result": {},
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "integer"},
                        "message": {"type": "string"},
                        "data": {
                            "type": "object",
                            "properties": {"code": {"type": "string", "enum": error_codes}},
                        },
                    },
                },
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string"},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "Readiness": READINESS_SCHEMA,
    }
    responses = {
        name: _json(_ref("Error"), text)
        for name, text in {
            "BadRequest": "invalid_json, invalid_request, invalid_params, bad_frame",
            "Unauthorized": "unauthenticated, invalid_token, stamp_malformed, "
            "stamp_key_unknown, stamp_expired, stamp_signature_invalid, stamp_replayed; "
            "with WWW-Authenticate",
            "Forbidden": "scope_denied, policy_denied, approvals_required, principal_unknown, "
            "request_mismatch, approval_*, signing_policy_violation, kms_attestation_denied",
            "NotFound": "not_found, account_not_found",
            "MethodNotAllowed": "method_not_allowed (see the Allow header)",
            "Conflict": "account_exists",
            "LengthRequired": "length_required: bodies need a Content-Length",
            "RequestTimeout": "request_timeout: the request did not arrive whole in time",
            "TooLarge": "body_too_large, frame_too_large",
            "UnsupportedMediaType": "unsupported_media_type: send application/json",
            "InternalError": "internal_error, storage_error and enclave-side failures",
            "BadGateway": "enclave_bad_response, kms_bad_response",
            "Unavailable": "enclave_unavailable, credentials_unavailable, kms_unavailable, "
            "nsm_unavailable, server_busy, draining, storage_unavailable; always with a "
            "Retry-After header",
        }.items()
    }
    common = {
        "405": _error("MethodNotAllowed"),
        "500": _error("InternalError"),
        "503": _error("Unavailable"),
    }
    body_errors = {
        "400": _error("BadRequest"),
        "408": _error("RequestTimeout"),
        "411": _error("LengthRequired"),
        "413": _error("TooLarge"),
        "415": _error("UnsupportedMediaType"),
    }
    enclave_errors = {"403": _error("Forbidden"), "502": _error("BadGateway")}
    paths: dict[str, Any] = {
        "/v1/accounts": {
            "post": {
                "operationId": "createAccount",
                "summary": "Generate an account inside the enclave and store its ciphertext",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("CreateAccountRequest")}},
                },
                "responses": {
                    "201": _json(_ref("CreatedAccount"), "created"),
                    "409": _error("Conflict"),
                    **body_errors,
                    **enclave_errors,
                    **common,
                },
            },
            "get": {
                "operationId": "listAccounts",
                "summary": "List accounts, oldest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(_ref("AccountList"), "a page of accounts"),
                    "400": _error("BadRequest"),
                    **common,
                },
            },
        },
        "/v1/accounts/{account_id}": {
            "get": {
                "operationId": "getAccount",
                "summary": "One account (never its ciphertexts)",
                "parameters": [_ACCOUNT_ID_PARAM],
                "responses": {
                    "200": _json(_ref("Account"), "the account"),
                    "400": _error("BadRequest"),
                    "404": _error("NotFound"),
                    **common,
                },
            }
        },
        "/v1/accounts/{account_id}/sign/transaction": {
            "post": {
                "operationId": "signTransaction",
                "summary": "Sign a transaction with the account's key, inside the enclave",
                "parameters": [_ACCOUNT_ID_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SignTransactionRequest")}},
                },
                "responses": {
                    "200": _json(_ref("SignedTransaction"), "the signed transaction"),
                    "404": _error("NotFound"),
                    **body_errors,
                    **enclave_errors,
                    **common,
                },
            }
        },
        "/v1/accounts/{account_id}/sign/transactions": _signing_path(
            "signTransactions",
            "Sign 1 to 100 transactions in one enclave round trip; each succeeds or fails "
            "on its own (HTTP 200 with per-item results)",
            "SignTransactionsRequest",
            "SignedTransactions",
            body_errors | enclave_errors | common,
        ),
        "/v1/accounts/{account_id}/sign/message": _signing_path(
            "signMessage",
            "Sign an EIP-191 personal message (as personal_sign / eth_sign)",
            "SignMessageRequest",
            "Signature",
            body_errors | enclave_errors | common,
        ),
        "/v1/accounts/{account_id}/sign/typed-data": _signing_path(
            "signTypedData",
            "Sign EIP-712 v4 typed data (as eth_signTypedData_v4)",
            "SignTypedDataRequest",
            "Signature",
            body_errors | enclave_errors | common,
        ),
        "/v1/accounts/{account_id}/sign/authorization": _signing_path(
            "signAuthorization",
            "Sign an EIP-7702 authorization tuple",
            "SignAuthorizationRequest",
            "SignedAuthorization",
            body_errors | enclave_errors | common,
        ),
        "/v1/attestation": {
            "get": {
                "operationId": "attestation",
                "summary": "A fresh attestation document from the enclave's NSM",
                "parameters": [
                    {
                        "name": name,
                        "in": "query",
                        "required": False,
                        "description": text,
                        "schema": {"type": "string", "pattern": "^(0x)?([0-9a-fA-F]{2}){1,512}$"},
                    }
                    for name, text in (
                        ("nonce", "hex, at most 512 bytes; recommended (freshness)"),
                        ("user_data", "hex, at most 512 bytes"),
                    )
                ],
                "responses": {
                    "200": _json(_ref("Attestation"), "the attestation document"),
                    "400": _error("BadRequest"),
                    **enclave_errors,
                    **common,
                },
            }
        },
        "/v1/audit/head": {
            "get": {
                "operationId": "auditHead",
                "summary": "The enclave's sealed receipt head, signed with a fresh nonce; the "
                "audit log holds it when this answers (nitro-wallet audit verify --head)",
                "parameters": [
                    {
                        "name": "nonce",
                        "in": "query",
                        "required": True,
                        "description": "16 to 64 random bytes, hex",
                        "schema": {"type": "string", "pattern": "^(0x)?([0-9a-fA-F]{2}){16,64}$"},
                    }
                ],
                "responses": {
                    "200": _json(_ref("AuditHead"), "the signed head"),
                    "400": _error("BadRequest"),
                    **enclave_errors,
                    **common,
                },
            }
        },
        "/": {
            "post": {
                "operationId": "jsonRpc",
                "summary": "Ethereum JSON-RPC 2.0 (single request or batch); see docs/api.md",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    _ref("JsonRpcRequest"),
                                    {"type": "array", "items": _ref("JsonRpcRequest")},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "oneOf": [
                                _ref("JsonRpcResponse"),
                                {"type": "array", "items": _ref("JsonRpcResponse")},
                            ]
                        },
                        "JSON-RPC answer(s), errors included",
                    ),
                    "204": {"description": "only notifications were sent: nothing to answer"},
                    "411": _error("LengthRequired"),
                    "413": _error("TooLarge"),
                    "415": _error("UnsupportedMediaType"),
                    **common,
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The relay process is up",
                "responses": {"200": _json(_ref("Status"), "up")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Storage, enclave, credentials and KMS (attested probe) checked",
                "responses": {
                    "200": _json(_ref("Readiness"), "ready"),
                    "503": _json(
                        _ref("Readiness"), "degraded, not_ready or draining; checks say why"
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format 0.0.4)",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
            }
        },
    }
    paths["/geth"] = {
        "post": {
            **paths["/"]["post"],
            "operationId": "jsonRpcGeth",
            "summary": "The same JSON-RPC; eth_signTransaction answers geth's {raw, tx}",
        }
    }
    _secured(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nitro-wallet relay",
            "version": __version__,
            "description": "Ethereum signing relay in front of a Nitro Enclave. Keys never "
            "leave the enclave in plaintext. Every response carries X-Request-Id.",
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "paths": paths,
        "security": [{"bearer": []}, {"stamp": []}],
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }
