"""`xe`: the XenServer command line, against pyxapi (or any XenAPI server).

Exit status as xe's: 0 on success (and for the usage text), 1 on any failure.
"""

from __future__ import annotations

import os
import sys

from pyxapi.cli import table
from pyxapi.cli.argv import Params, Usage, parse_client, parse_command
from pyxapi.cli.errors import ApiFailure, CliFailure, ConnectFailure, MultipleFailure, ParamError, XeExit
from pyxapi.cli.printer import Printer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.argv import ClientOptions
    from pyxapi.cli.ctx import Ctx
    from pyxapi.cli.session import Api


def _usage(argv0: str) -> None:
    sys.stderr.write(
        f"Usage: {argv0} <cmd> [-s server] [-p port] ([-u username] [-pw password] or [-pwf <password file>])"
        " [--traceparent traceparent] <other arguments>\n"
    )
    sys.stderr.write(f"\nA full list of commands can be obtained by running \n\t{argv0} help -s <server> -p <port>\n")


def _run(c: Ctx, spec: table.CommandSpec) -> None:
    if spec.generated:
        from pyxapi.cli import generated

        generated.run(c, *spec.generated)
        return
    from pyxapi.cli.commands import registry

    handler = registry().get(spec.name)
    if handler is None:
        raise CliFailure(f"The command {spec.name} is not implemented by pyxapi's xe yet.")
    handler(c)


def execute(opts: ClientOptions, words: list[str], argv0: str = "xe", wants_help: bool = False) -> int:
    name, params = parse_command(words)
    if wants_help and name != "help":
        name, params = "help", Params([(name, "")])
    printer = Printer(minimal=params.flag("minimal"))
    if name == "help":
        from pyxapi.cli import help

        help.run(printer, params, argv0)
        printer.flush()
        return 0
    spec = table.command(name)
    if spec is None:
        raise ParamError("Unknown command", name)
    for key in spec.reqd:
        if key not in params:
            raise ParamError("Required parameter not found", key)
    from pyxapi.cli.ctx import Ctx
    from pyxapi.cli.session import login

    api: Api = login(opts, local_session="l" in spec.flags)
    c = Ctx(name, api, params, printer, opts)
    try:
        _run(c, spec)
    except ApiFailure as e:
        # Leave the session open until the error's references have been named.
        _print_api_error(e, c)
        raise XeExit(1) from None
    finally:
        api.logout()
    printer.flush()
    return 0


def _print_api_error(e: ApiFailure, c: Ctx | None) -> None:
    from pyxapi.cli.report import error_lines

    if e.code == "SESSION_AUTHENTICATION_FAILED":
        given = bool(e.params and e.params[0])  # xapi names the user it could not authenticate
        what = "Authentication failed" if given or not e.params else "Username/password must be specified"
        sys.stderr.write(f"{what}\nFor usage run: 'xe help'\n")
        return
    sys.stderr.write("\n".join(error_lines(e, c.resolver if c else None)) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    argv0 = os.path.basename(sys.argv[0]) if argv is None and sys.argv and sys.argv[0] else "xe"
    if argv0 in ("__main__.py", "-c", ""):
        argv0 = "xe"
    opts = None
    try:
        if "-version" in args:
            print("ThinCLI protocol: 0.2")
            return 0
        if args[:1] == ["--complete"]:  # for xe-completion.bash
            from pyxapi.cli.complete import complete

            opts, _, _ = parse_client([])
            sys.stdout.write("".join(f"{w}\n" for w in complete(opts, args[1] if len(args) > 1 else "")))
            return 0
        opts, words, wants_help = parse_client(args)
        if not words:
            raise Usage
        return execute(opts, words, argv0, wants_help)
    except Usage:
        _usage(argv0)
        return 0
    except XeExit as e:
        return e.code
    except ParamError as e:
        sys.stderr.write("\n".join(e.lines()) + "\n")
    except CliFailure as e:
        sys.stderr.write(f"Error: {e}\n")
    except MultipleFailure as e:
        for uuid, message in e.failures:
            sys.stdout.write(f"operation failed on {uuid}: {message}\n")
    except ApiFailure as e:  # raised while logging in
        _print_api_error(e, None)
    except ConnectFailure as e:
        sys.stderr.write(f"{e}\n")
    except KeyboardInterrupt:
        return 1
    except (ConnectionError, OSError) as e:
        if opts is not None and opts.debug:
            raise
        sys.stderr.write(f"Lost connection to the server: {e}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
