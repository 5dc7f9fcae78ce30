"""The ways an xe command fails, each printed the way xe prints it, with xe's exit codes."""

from __future__ import annotations


class XeExit(Exception):
    """Leave with this exit code; whatever had to be said is already printed."""

    def __init__(self, code: int = 1) -> None:
        super().__init__(code)
        self.code = code


class ApiFailure(Exception):
    """The server answered an API call with an error: [CODE, params...]."""

    def __init__(self, code: str, params: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(code, *params)
        self.code = code
        self.params = [str(p) for p in params]


class CliFailure(Exception):
    """A client-side refusal: printed as `Error: <message>`."""


class ParamError(Exception):
    """Bad command line: `<kind>: <detail>` then `For usage run: 'xe help'`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail

    def lines(self) -> list[str]:
        head = f"{self.kind}: {self.detail}" if self.kind else self.detail
        return [head, "For usage run: 'xe help'"]


class MultipleFailure(Exception):
    """An operation applied to several objects failed on some: (uuid, message) per failure."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        super().__init__(failures)
        self.failures = failures


class ConnectFailure(Exception):
    """No server to talk to; the message is xe's."""


def required(params: dict[str, str], name: str) -> str:
    if name not in params:
        raise ParamError("Required parameter not found", name)
    return params[name]
