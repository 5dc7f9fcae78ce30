"""The errors an import gives, with xapi's codes and parameters (errors.json)."""

from __future__ import annotations

from pyxapi.model.errors import ApiError


class ImportFailure(ApiError):
    """IMPORT_ERROR [msg]: what xapi reports for an archive it cannot use (its generic case)."""

    def __init__(self, msg: str) -> None:
        self.msg = msg
        super().__init__("IMPORT_ERROR", msg)


class PrematureEOF(ApiError):
    """The body ended before the archive did (a truncated file, a client that went away)."""

    def __init__(self) -> None:
        super().__init__("IMPORT_ERROR_PREMATURE_EOF")


class UnexpectedFile(ApiError):
    def __init__(self, expected: str, found: str) -> None:
        self.expected = expected
        self.found = found
        super().__init__("IMPORT_ERROR_UNEXPECTED_FILE", expected, found)


class ObjectNotFound(ApiError):
    """An object refers to an export-local id that the archive does not define."""

    def __init__(self, ident: str) -> None:
        super().__init__("IMPORT_ERROR_FAILED_TO_FIND_OBJECT", ident)


class IncompatibleVersion(ApiError):
    def __init__(self) -> None:
        super().__init__("IMPORT_INCOMPATIBLE_VERSION")


class CannotHandleChunked(ApiError):
    def __init__(self) -> None:
        super().__init__("IMPORT_ERROR_CANNOT_HANDLE_CHUNKED")


class AttachedDisksNotFound(ApiError):
    def __init__(self) -> None:
        super().__init__("IMPORT_ERROR_ATTACHED_DISKS_NOT_FOUND")
