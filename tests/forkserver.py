"""Run the CLI in a child process under resource limits, cheaply.

Importing torch costs seconds, and the hostile-input suite runs the CLI a hundred times. So one
server process imports torch and vdvae_cli once, and every case is a ``fork()`` of it that sets its
limits (``resource.setrlimit``: address space, CPU seconds, file size), its standard streams (files,
/dev/full, or closed), its environment and working folder, optionally drops the capabilities that
let root ignore file permissions, and then runs ``vdvae_cli._entry.main()`` exactly as the console
script does. The server reports the exit status, the signal that ended the child, its peak resident
memory (``wait4``) and its wall time, and kills a child that outlives its time limit.

    with ForkServer() as fs:
        r = fs.run(["info", "--model", "x.safetensors"], cwd=tmp, env=env, address_space=3 << 30)
        r.code, r.stdout, r.stderr, r.peak_mb, r.seconds

Run as a script it is the server: one JSON request per line on stdin, one JSON answer per line on
stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


@dataclass
class Result:
    code: int | None  # exit status, None when a signal ended the child
    signal: int | None
    stdout: bytes
    stderr: bytes
    peak_mb: float
    seconds: float
    timed_out: bool
    argv: list[str] = field(default_factory=list)

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def __str__(self) -> str:
        return (f"vdvae {' '.join(self.argv)} -> code {self.code} signal {self.signal} peak {self.peak_mb:.0f} MB "
                f"{self.seconds:.1f}s timed_out={self.timed_out}\nstderr: {self.err[-3000:]!r}\nstdout: {self.stdout[:300]!r}")


class ForkServer:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ForkServer":
        env = dict(os.environ)
        env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)
        ready = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert ready.strip() == "ready", f"fork server did not start: {ready!r}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)

    def run(self, argv: list[str], *, cwd: Path | str, env: dict[str, str], stdin: Path | str | bytes | None = None,
            stdout: str | None = None, stderr: str | None = None, address_space: int = 3 << 30, cpu: int = 60,
            wall: float = 60.0, fsize: int | None = None, no_dac: bool = False, hook: str | None = None,
            pidfile: Path | None = None) -> Result:
        """Run ``vdvae ARGV`` in a child. ``stdin``: a file, bytes, or None (/dev/null). ``stdout`` /
        ``stderr``: None (captured), ``"closed"`` or ``"full"`` (/dev/full). ``no_dac``: drop
        CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that file permissions apply to root too.
        ``hook``: a test-only patch applied in the child before main (see ``_HOOKS``)."""
        assert self.proc is not None
        with tempfile.TemporaryDirectory() as tmp:
            out_file, err_file = Path(tmp) / "out", Path(tmp) / "err"
            if isinstance(stdin, bytes):
                (Path(tmp) / "in").write_bytes(stdin)
                stdin = Path(tmp) / "in"
            request = {
                "argv": argv, "cwd": str(cwd), "env": env, "stdin": str(stdin) if stdin else None,
                "stdout": stdout or str(out_file), "stderr": stderr or str(err_file), "as": address_space,
                "cpu": cpu, "wall": wall, "fsize": fsize, "no_dac": no_dac, "hook": hook,
                "pidfile": str(pidfile) if pidfile else None,
            }
            self.proc.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            answer = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
            return Result(answer["code"], answer["signal"], out_file.read_bytes() if out_file.exists() else b"",
                          err_file.read_bytes() if err_file.exists() else b"", answer["peak_kb"] / 1024,
                          answer["seconds"], answer["timed_out"], argv)


# --------------------------------------------------------------------------------------------------
# The server side


def _drop_dac() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    data[0].permitted &= ~((1 << 1) | (1 << 2))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _hook_slow_replace() -> None:
    """Atomic writes pause for 30 s just before their rename (the temporary file exists): room for a
    test to send a signal at exactly that moment."""
    real = os.replace

    def slow(src, dst, *a, **k):
        if str(src).endswith(".tmp"):
            time.sleep(30)
        return real(src, dst, *a, **k)

    os.replace = slow  # type: ignore[assignment]


_HOOKS = {"slow_replace": _hook_slow_replace}


def _child(req: dict) -> None:
    import resource
    import signal

    os.setsid()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])

    def place(fd: int, spec: str | None, flags: int) -> bool:
        if spec == "closed":
            os.close(fd)
            return False
        target = {"full": "/dev/full", None: "/dev/null"}.get(spec, spec)
        new = os.open(target, flags, 0o644)
        os.dup2(new, fd)
        os.close(new)
        return True

    place(0, req["stdin"], os.O_RDONLY)
    place(1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    place(2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    # As a fresh interpreter would have them: None where the descriptor is closed.
    def stream(fd: int, mode: str):
        try:
            os.fstat(fd)
        except OSError:
            return None
        return open(fd, mode, closefd=False, **({"errors": "backslashreplace"} if fd == 2 else {}))

    sys.stdin, sys.stdout, sys.stderr = stream(0, "r"), stream(1, "w"), stream(2, "w")
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as CPython sets it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if req["fsize"]:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
    if req["no_dac"]:
        _drop_dac()
    if req["pidfile"]:
        Path(req["pidfile"]).write_text(str(os.getpid()))
    if req["hook"]:
        for name in req["hook"].split(","):
            _HOOKS[name]()
    resource.setrlimit(resource.RLIMIT_CPU, (req["cpu"], req["cpu"] + 5))
    resource.setrlimit(resource.RLIMIT_AS, (req["as"], req["as"]))
    sys.argv = ["vdvae", *req["argv"]]
    code = 0
    try:
        from vdvae_cli._entry import main  # the console script's entry point (signal handlers first)

        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the CLI must never get here; show it like Python would
        import traceback

        traceback.print_exc()
        code = 99
    for s in (sys.stdout, sys.stderr):
        try:
            if s is not None:
                s.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


def _serve() -> None:
    import signal

    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401

    import vdvae_cli.modelfiles.checkpoint  # noqa: F401
    import vdvae_cli.cli  # noqa: F401
    import vdvae_cli.training.data  # noqa: F401
    import vdvae_cli.families.vdvae.fused  # noqa: F401
    import vdvae_cli.modelfiles.resolve  # noqa: F401
    import vdvae_cli.base.images  # noqa: F401
    import vdvae_cli.engine.latents  # noqa: F401
    import vdvae_cli.engine.ops  # noqa: F401
    import vdvae_cli.training.loop  # noqa: F401

    torch.set_num_threads(1)
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                _child(req)
            finally:
                os._exit(98)
        timed_out = False
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - t0 > req["wall"]:
                timed_out = True
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    os.kill(pid, signal.SIGKILL)
                done, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.005)
        answer = {
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "peak_kb": usage.ru_maxrss, "seconds": round(time.monotonic() - t0, 3), "timed_out": timed_out,
        }
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    _serve()
