"""The Typer app and the CLI's single error boundary.

Commands are registered with :func:`command`, which wraps them so that every known error becomes
one line on stderr (plus a hint) and a meaningful exit code: 0 success, 1 runtime failure, 2 usage
error, 130 interrupted. ``VDVAE_DEBUG=1`` re-raises with the traceback. Command modules import
torch inside their functions, so ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

import typer

from .. import __version__
from ..errors import DeviceError, VDVAEError, is_out_of_memory

app = typer.Typer(
    name="vdvae",
    help="Very Deep VAEs from the command line: sample, reconstruct, mix, encode, decode, evaluate, train.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def debug() -> bool:
    return os.environ.get("VDVAE_DEBUG", "").strip() not in ("", "0", "false", "no")


def fail(message: str, hint: str | None = None, code: int = 1) -> typer.Exit:
    """Print ``error: message`` (and the hint) on stderr; return the Exit to raise."""
    line = f"error: {message}"
    if hint:
        line += f" ({hint})"
    print(line, file=sys.stderr)
    return typer.Exit(code)


def emit_json(obj: Any) -> None:
    """One JSON record on stdout in one write (so records of several processes never share a line)."""
    import json

    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``app.command`` with the error boundary around the function."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return func(*a, **kw)
            except (typer.Exit, typer.Abort, typer.BadParameter):
                raise
            except VDVAEError as exc:
                if debug():
                    raise
                raise fail(str(exc), exc.hint, exc.exit_code) from None
            except KeyboardInterrupt:
                raise fail("interrupted", code=130) from None
            except BrokenPipeError:
                # The reader went away (e.g. `vdvae sample -o - | head -c 10`): not our failure.
                sys.stderr.close()
                raise typer.Exit(0) from None
            except (RuntimeError, MemoryError) as exc:
                if debug():
                    raise
                if is_out_of_memory(exc):
                    err = DeviceError("out of memory", hint="use a smaller --batch-size, or --dtype bf16")
                    raise fail(str(err), err.hint, 1) from None
                raise fail(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                           "set VDVAE_DEBUG=1 for the traceback") from None
            except Exception as exc:
                if debug():
                    raise
                raise fail(f"internal error: {type(exc).__name__}: {exc}",
                           "set VDVAE_DEBUG=1 for the traceback and report it") from None
            finally:
                if "torch.distributed" in sys.modules:  # torchrun: leave the process group cleanly
                    from ..runtime import close_distributed

                    close_distributed()

        return app.command(*args, **kwargs)(wrapper)

    return register


def _version(value: bool) -> None:
    if value:
        print(f"vdvae-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Very Deep VAEs from the command line."""


def _parser_error(exc: BaseException) -> int | None:
    """The exit code for an error of Typer's own argument parser (unknown option, missing argument,
    bad value): 2 for usage errors, 1 for the rest; None for any other exception. Recognised by class
    name, because Typer 0.26 moved its Click into a private module."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "UsageError" in names:
        return 2
    return 1 if "ClickException" in names else None


def run(args: list[str] | None = None) -> int:
    """Run the app; Typer's own parser errors go through the same boundary as ours: one
    ``error:`` line on stderr with a hint, exit 2 for usage errors. Returns the exit code."""
    try:
        code = app(args=args, standalone_mode=False)
    except Exception as exc:
        exit_code = _parser_error(exc)
        if exit_code is None:
            if type(exc).__name__ == "Abort":  # a prompt was interrupted
                return fail("aborted", code=1).exit_code
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `vdvae` or `vdvae cache ...`: show the help
            print(exc.format_message() if hasattr(exc, "format_message") else str(exc), file=sys.stderr)
            return 2
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        where = getattr(ctx, "command_path", None) or "vdvae"
        raise SystemExit(fail(message.strip().rstrip("."), f"see `{where} --help`", exit_code).exit_code) from None
    except (KeyboardInterrupt, EOFError):
        return fail("interrupted", code=130).exit_code
    return code if isinstance(code, int) else 0
