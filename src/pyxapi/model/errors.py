"""Typed API errors. Raised anywhere; only wire/ turns them into protocol failures."""

from __future__ import annotations


class ApiError(Exception):
    """A XenAPI failure: an error code from the catalogue plus its string parameters."""

    def __init__(self, code: str, *params: object) -> None:
        self.code = code
        self.params = [_param_text(p) for p in params]
        super().__init__(code, *self.params)

    @property
    def description(self) -> list[str]:
        return [self.code, *self.params]

    def __repr__(self) -> str:
        return f"ApiError({self.code!r}, {', '.join(map(repr, self.params))})"


def _param_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Codes used by the generic layers (dispatch, store, sessions), kept as names so a typo is an import error.
HANDLE_INVALID = "HANDLE_INVALID"
UUID_INVALID = "UUID_INVALID"
SESSION_INVALID = "SESSION_INVALID"
FIELD_TYPE_ERROR = "FIELD_TYPE_ERROR"
MESSAGE_METHOD_UNKNOWN = "MESSAGE_METHOD_UNKNOWN"
MESSAGE_PARAMETER_COUNT_MISMATCH = "MESSAGE_PARAMETER_COUNT_MISMATCH"
MESSAGE_REMOVED = "MESSAGE_REMOVED"
RBAC_PERMISSION_DENIED = "RBAC_PERMISSION_DENIED"
INTERNAL_ERROR = "INTERNAL_ERROR"
NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
MAP_DUPLICATE_KEY = "MAP_DUPLICATE_KEY"
INVALID_VALUE = "INVALID_VALUE"
DB_UNIQUENESS_CONSTRAINT_VIOLATION = "DB_UNIQUENESS_CONSTRAINT_VIOLATION"
OPERATION_NOT_ALLOWED = "OPERATION_NOT_ALLOWED"
