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
from typing import Any, BinaryIO, Callable

import typer

from .. import __version__
from ..base.errors import DeviceError, OutputError, UsageError, VDVAEError, is_out_of_memory
from ._help import install as install_help_style

install_help_style()
app = typer.Typer(
    name="vdvae",
    help="Very Deep VAEs and NVAE from the command line: sample, reconstruct, mix, interpolate, encode, decode, evaluate, train.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def debug() -> bool:
    return os.environ.get("VDVAE_DEBUG", "").strip() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------------------------------
# The standard streams: messages go to stderr and never to stdout, whatever state stderr is in;
# data goes to stdout, and failing to write it is one clear error.


class _ClosedStream:
    """Stands in for a standard stream that was closed when the process started (``>&-``)."""

    closed_stream = True  # images.plan_output refuses it before any work

    def __init__(self, name: str):
        self.name = name

    @property
    def buffer(self) -> "_ClosedStream":
        return self

    def write(self, data) -> int:
        import errno

        raise OSError(errno.EBADF, "it is closed")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("closed")

    def read(self, *a) -> bytes:
        return b""


def guard_std_streams() -> None:
    """Called once at process start. A closed descriptor 0, 1 or 2 is reopened on /dev/null, so that
    no file this process opens later lands on it (with stderr closed, a log line would otherwise go
    into the PNG on stdout, or into a model file). A closed stderr then swallows messages; a closed
    stdout makes writing data to it an error."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    if 2 in closed or sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")
    if 1 in closed or sys.stdout is None:
        sys.stdout = _ClosedStream("stdout")
    if 0 in closed or sys.stdin is None:
        sys.stdin = open(0, "r", closefd=False)


def say(line: str) -> None:
    """One message line on stderr (escaped: it may hold names from files). Never on stdout, and
    silently nothing when stderr is closed or broken."""
    from ..base.safety import clean

    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(clean(line) + "\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass


def write_stdout(data: bytes | str) -> None:
    """Data (bytes) or text (a line) to stdout, flushed; any failure is an OutputError."""
    try:
        if isinstance(data, str):
            sys.stdout.write(data)
            sys.stdout.flush()
        else:
            stream: BinaryIO | None = getattr(sys.stdout, "buffer", None)
            if stream is None:  # a text-only stand-in for stdout (a notebook's, an embedding program's)
                raise OutputError("stdout takes only text here, not image or file data",
                                  hint="write to a file with -o FILE")
            stream.write(data)
            stream.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a closed file object
        from ..base.safety import stdout_failed

        raise stdout_failed(exc) from None


def out(line: str = "") -> None:
    """A line of a human-readable report on stdout (escaped: it may hold names from files)."""
    from ..base.safety import clean

    write_stdout(clean(line) + "\n")


def emit_json(obj: Any) -> None:
    """One strict JSON object on one line of stdout, in one write (torchrun ranks share the stream)."""
    from ..base.safety import dumps

    write_stdout(dumps(obj) + "\n")


def fail(message: str, hint: str | None = None, code: int = 1) -> typer.Exit:
    """Print ``error: message`` (and the hint) as one line on stderr; return the Exit to raise."""
    from ..base.safety import one_line

    line = f"error: {one_line(message)}"
    if hint:
        line += f" ({one_line(hint)})"
    say(line)
    return typer.Exit(code)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (so temporary files are removed) and exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _install_signals() -> Callable[[], None]:
    """Turn SIGTERM/SIGHUP into :class:`Terminated` while a command runs; returns the undo."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):  # noqa: ARG001
        raise Terminated(signum)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            current = signal.getsignal(sig)
            if getattr(current, "__module__", None) == "vdvae_cli.base.signals":
                continue  # the program's own exit handlers (the `vdvae` entry point) stay in charge
            if current == signal.SIG_IGN:  # (an inherited disposition reads back as the int 1, not the enum)
                continue  # nohup (or a background job) asked for it to be ignored: keep ignoring it
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass

    def restore() -> None:
        for sig, old in previous.items():
            try:
                signal.signal(sig, old)
            except (ValueError, OSError, TypeError):
                pass

    return restore


def _oserror_text(exc: OSError) -> str:
    parts = [exc.strerror or type(exc).__name__]
    if exc.filename is not None:
        parts.append(str(exc.filename))
    return ": ".join(parts)
def _check_numbers(values: dict[str, Any]) -> None:
    """Every number option is a finite number: NaN passes every range check (all comparisons with it
    are false) and an infinity overflows whatever it sizes, so both are refused here, where the
    options are parsed, for every command at once; each command checks its own ranges. Every --seed
    is 0 to MAX_SEED: outside it a seed would repeat another one's draws, or overflow torch's."""
    import math

    import click

    from ..base.safety import MAX_SEED

    ctx = click.get_current_context(silent=True)
    params = {p.name: p for p in ctx.command.params} if ctx is not None else {}
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                param = params.get(name)
                opts = getattr(param, "opts", None) or [f"--{name.replace('_', '-')}"]
                flag = max(opts, key=len)
                raise UsageError(f"{flag} must be a finite number, got {item}")
            if name == "seed" and isinstance(item, int) and not 0 <= item <= MAX_SEED:
                raise UsageError(f"--seed must be a whole number from 0 to {MAX_SEED:,}, got {item}")


RUNNING: list[str] = []  # the subcommand this process runs (for messages that name it)


def command(*args: Any, group: "typer.Typer | None" = None, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``app.command`` (or ``group.command`` for a subcommand group) with the error boundary around the function."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        name = args[0] if args and isinstance(args[0], str) else func.__name__
        if group is not None and group.info.name:
            name = f"{group.info.name} {name}"

        @functools.wraps(func)
        def wrapper(*a: Any, **kw: Any) -> Any:
            import warnings

            RUNNING[:] = [name]

            from ..base.safety import cleanup_temps, first_line

            restore = _install_signals()
            try:
                with warnings.catch_warnings():
                    if not debug():  # library warnings (numpy, torch, Pillow) are not our messages
                        warnings.simplefilter("ignore")
                    _check_numbers(kw)
                    return func(*a, **kw)
            except (typer.Exit, typer.Abort, typer.BadParameter):
                raise
            except VDVAEError as exc:
                if debug():
                    raise
                raise fail(str(exc), exc.hint, exc.exit_code) from None
            except KeyboardInterrupt:
                cleanup_temps()
                raise fail("interrupted", code=130) from None
            except Terminated as exc:
                cleanup_temps()
                raise fail("terminated", code=128 + exc.signum) from None
            except BrokenPipeError as exc:
                # The reader went away (e.g. `vdvae sample -o - | head -c 10`): not our failure.
                from ..base.safety import stdout_failed

                stdout_failed(exc)  # only to point stdout at /dev/null for the exit flush
                raise typer.Exit(0) from None
            except RecursionError:
                if debug():
                    raise
                raise fail("an input is nested too deeply to read", "set VDVAE_DEBUG=1 for the traceback") from None
            except (RuntimeError, MemoryError, OSError) as exc:
                if debug():
                    raise
                if is_out_of_memory(exc):
                    err = DeviceError("out of memory", hint="use a smaller --batch-size, --dtype bf16, or smaller inputs")
                    raise fail(str(err), err.hint, 1) from None
                if isinstance(exc, OSError):
                    raise fail(_oserror_text(exc)) from None
                raise fail(f"{type(exc).__name__}: {first_line(exc)}", "set VDVAE_DEBUG=1 for the traceback") from None
            except Exception as exc:
                if debug():
                    raise
                raise fail(f"internal error: {type(exc).__name__}: {first_line(exc)}",
                           "set VDVAE_DEBUG=1 for the traceback and report it") from None
            finally:
                cleanup_temps()
                restore()
                if "torch.distributed" in sys.modules:  # torchrun: leave the process group cleanly
                    from ..engine.runtime import close_distributed

                    close_distributed()

        return (group or app).command(*args, **kwargs)(wrapper)

    return register


def _version(value: bool) -> None:
    if value:
        out(f"vdvae-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Very Deep VAEs and NVAE from the command line."""


def _parser_error(exc: BaseException) -> int | None:
    """The exit code for an error of Typer's own argument parser (unknown option, missing argument,
    bad value): 2 for usage errors, 1 for the rest; None for any other exception. Recognised by class
    name, because Typer 0.26 moved its Click into a private module."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "UsageError" in names:
        return 2
    return 1 if "ClickException" in names else None


def _empty_output(argv: list[str]) -> str | None:
    """The output option given an empty name (``-o ""``, ``--output=``), which every parser would
    take for the current folder; None when there is none."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in ("-o", "--output") and i + 1 < len(argv) and not argv[i + 1].strip():
            return arg
        if arg.startswith("--output=") and not arg.partition("=")[2].strip():
            return "--output"
    return None


def run(args: list[str] | None = None) -> int:
    """Run the app; Typer's own parser errors go through the same boundary as ours: one
    ``error:`` line on stderr with a hint, exit 2 for usage errors. Returns the exit code."""
    empty = _empty_output(sys.argv[1:] if args is None else list(args))
    if empty is not None:
        return fail(f"{empty} is empty", "give a file, a folder (DIR/) or - for stdout; an empty name would "
                    "mean the current folder", 2).exit_code
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
