"""Device and dtype choice, and generators from seeds: decided once, at the edge."""

from __future__ import annotations

import functools
import os
import queue
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from ..base.errors import DeviceError, UsageError, is_out_of_memory

T = TypeVar("T")
Tensor = torch.Tensor

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_MASK64 = (1 << 64) - 1


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda if present, else mps, else cpu; ``cuda:N`` / ``mps`` / ``cpu`` are checked."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}", hint="use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but is not available here", hint="use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DeviceError("MPS was requested but is not available here", hint="use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {spec!r}", hint="use auto, cpu, cuda, cuda:N or mps")
    elif device.index not in (None, 0):  # torch accepts cpu:5 and runs on the one CPU device anyway
        raise UsageError(f"unknown device {spec!r}: there is one CPU device", hint="use cpu")
    return device


def pick_dtype(spec: str = "fp32") -> torch.dtype:
    try:
        return DTYPES[spec.lower()]
    except KeyError:
        raise UsageError(f"unknown dtype {spec!r}", hint="use fp32, bf16 or fp16") from None


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` in a run seeded with ``seed``: a hash of the pair (63-bit)."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64)) >> 1


def image_generators(seed: int, indices) -> list[torch.Generator]:
    """One generator per image index, so image ``i`` depends only on ``(seed, i)``, never on the batch.
    CPU generators: a seed names the same noise on every device (CUDA's generator draws other numbers),
    so a seeded image differs between CPU and GPU by float rounding only."""
    gens = []
    for i in indices:
        g = torch.Generator()
        g.manual_seed(image_seed(seed, int(i)))
        gens.append(g)
    return gens


def fresh_seed() -> int:
    """A random seed to report when the user gave none (so every run can be repeated)."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_UP_TO = 32 * 2**20
_KEEP_FREED = 256 * 2**20


def reuse_freed_memory() -> bool:
    """Let glibc serve allocations up to 32 MiB from its heap and keep up to 256 MiB of freed heap,
    instead of mapping each large tensor afresh and unmapping it when freed. A CPU inference pass
    frees and reallocates the same few activation sizes hundreds of times; mapped afresh, every
    one costs page faults and zeroing by the kernel (~80,000 faults, 5% of a VDVAE cifar10 batch).
    Does nothing off glibc, or when the environment already tunes malloc. Returns whether it did."""
    if not sys.platform.startswith("linux") or any(
            k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt accepts and ignores these
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _HEAP_UP_TO)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED))


def freeze_startup_objects() -> None:
    """Move every object alive now (most of them made by importing torch: about a million) out of
    the garbage collector's reach. Left in, each full collection walks them all, ~80 ms on a small
    CPU, and one falls during the first model load of every command (a third of the start-up above
    ``import torch``). Objects made from now on are collected as usual; the frozen ones live as long
    as the process would have kept them anyway."""
    import gc

    gc.freeze()


def configure_backends(device: torch.device, dtype: torch.dtype) -> None:
    """Process-wide kernel choices for inference on ``device``: cuDNN autotuning (shapes repeat from
    batch to batch), and no TF32 when the network runs in fp32, so that ``--dtype fp32`` computes
    in IEEE fp32 as the reference did (bf16/fp16 are the fast modes); on a CPU, freed activation
    memory is reused (:func:`reuse_freed_memory`)."""
    if device.type == "cpu":
        reuse_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        exact = dtype == torch.float32
        torch.backends.cudnn.allow_tf32 = not exact
        torch.backends.cuda.matmul.allow_tf32 = not exact


def prefers_channels_last(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether channels-last is the faster layout: always with oneDNN (CPU); with cuDNN only for
    bf16/fp16 (tensor cores). IEEE fp32 convolutions ran 6-22% slower in channels-last than NCHW on
    an H200 for every official architecture (benchmarks/results-cuda-*.json)."""
    return device.type != "cuda" or dtype != torch.float32


def prepare_for_inference(model, *, channels_last: bool | None = None, compile: bool = False, fuse: bool = True):
    """Speed options that do not change the maths; returns the same model.

    * channels-last memory layout (``None``: where :func:`prefers_channels_last` says it is faster):
      faster convolutions with oneDNN, and with cuDNN in half precision;
    * ``fuse`` (channels-last): the family's fused kernels (VDVAE: oneDNN kernels that apply each
      conv's GELU or residual add in the same pass; skipped where the build or CPU lacks them, and
      when compiling);
    * ``compile``: ``torch.compile`` of the family's repeated blocks.
    """
    if channels_last is None:
        p = next(model.parameters())
        channels_last = prefers_channels_last(p.device, p.dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if (fuse and channels_last) or compile:
        from .registry import family_of

        family_of(model).prepare_for_inference(model, fuse=fuse and channels_last, compile=compile)
    return model


# --------------------------------------------------------------------------------------------------
# Many processes (torchrun)


@dataclass(frozen=True)
class Shard:
    """This process's part of a job: image ``i`` belongs to rank ``i % world``."""

    rank: int = 0
    world: int = 1

    def indices(self, total: int) -> range:
        """A lazy range: ``sample -n 1000000000000`` does not build a list of a trillion numbers."""
        return range(self.rank, total, self.world)

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE) started several processes. A
    launcher environment that is incomplete or malformed is a usage error, not a crash in torch."""
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return False
    if not (text.isascii() and text.isdigit()) or len(text) > 6 or int(text) < 1:
        raise UsageError(f"WORLD_SIZE={text[:20]!r} is not a number of processes",
                         hint="unset WORLD_SIZE, or start the processes with torchrun")
    return int(text) > 1


def _check_launcher_env() -> None:
    """The variables torchrun sets besides WORLD_SIZE, checked before torch.distributed reads them
    (its own errors are multi-line tracebacks)."""
    world = int(os.environ["WORLD_SIZE"])
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v, "").strip()]
    if missing:
        raise UsageError(f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not",
                         hint="start several processes with torchrun, or unset WORLD_SIZE")
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "0").strip()
        if not (value.isascii() and value.isdigit()) or (var == "RANK" and int(value) >= world):
            raise UsageError(f"{var}={value[:20]!r} is not a process number below WORLD_SIZE={world}",
                             hint="start several processes with torchrun")
    port = os.environ["MASTER_PORT"].strip()
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UsageError(f"MASTER_PORT={port[:20]!r} is not a port number", hint="start the processes with torchrun")


def init_distributed(device_spec: str = "auto") -> tuple[torch.device, Shard]:
    """The device and shard of this process. Under torchrun this joins the process group (NCCL when
    the processes use CUDA, one GPU per local rank; gloo on CPU); otherwise it is one shard of one."""
    if not launched_distributed():
        return pick_device(device_spec), Shard()
    _check_launcher_env()
    import torch.distributed as dist

    spec = (device_spec or "auto").strip().lower()
    use_cuda = spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but is not available here", hint="use --device cpu")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(f"local rank {local_rank} but only {torch.cuda.device_count()} CUDA device(s)",
                              hint="start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif spec in ("auto", "cpu"):
        device = torch.device("cpu")
    else:
        raise UsageError(f"--device {device_spec} cannot be shared by several processes", hint="use auto, cuda or cpu")
    if not dist.is_initialized():
        from datetime import timedelta

        wait = rendezvous_timeout()
        try:
            # the meeting is bounded by the rendezvous timeout; later collective waits keep torch's
            # default (a rank may spend minutes writing an evaluation while the others wait)
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=rank == 0, timeout=timedelta(seconds=wait))
            dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world)
        except (RuntimeError, ValueError) as exc:  # torch's DistStoreError and friends
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise DeviceError(
                f"the {os.environ.get('WORLD_SIZE', '?')} processes did not meet within {wait:g} s: rank "
                f"{os.environ.get('RANK', '?')} waited at {where} ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})",
                hint="start every rank (torchrun --nproc-per-node N starts them together), or set "
                     "VDVAE_RENDEZVOUS_TIMEOUT=SECONDS") from None
    return device, Shard(dist.get_rank(), dist.get_world_size())


def rendezvous_timeout() -> float:
    """Seconds the processes of a torchrun job wait for each other to meet (``VDVAE_RENDEZVOUS_TIMEOUT``,
    default 60; also the bound of each later collective wait)."""
    text = os.environ.get("VDVAE_RENDEZVOUS_TIMEOUT", "").strip()
    if not text:
        return 60.0
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (1 <= value <= 86_400):
        raise UsageError(f"VDVAE_RENDEZVOUS_TIMEOUT must be 1 to 86400 seconds, got {text[:40]!r}")
    return value


def close_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# Batch sizes


def cpu_batch_size(bytes_per_image: float, *, cap: int = 16) -> int:
    """``--batch-size auto`` on a CPU: CPUs gain little past a few images per pass, so this is
    ``cap`` unless the machine's available memory (half of it) holds fewer images."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return max(1, min(cap, 4))
    return max(1, min(cap, int(0.5 * available / max(bytes_per_image, 1.0))))


def run_in_batches(
    indices: Sequence[int],
    fn: Callable[[list[int]], T],
    *,
    batch_size: int | None,
    device: torch.device,
    start: int = 1,
    cap: int = 512,
) -> Iterator[tuple[list[int], T]]:
    """Call ``fn`` on consecutive slices of ``indices``; yield ``(slice, fn(slice))``.

    ``batch_size`` fixed: slices of that size; running out of device memory is a :class:`DeviceError`
    that says to lower it. ``batch_size=None`` (``auto``): the first slice has ``start`` images and
    each success doubles the size (up to ``cap``) until the device runs out of memory; then the
    failed slice is retried at half the size, which is kept from then on. Every result is real
    work (nothing is thrown away but the failed attempt), and because image ``i`` depends only on
    ``(seed, i)``, the images are the same whatever sizes the slices end up having.
    """
    todo = indices if isinstance(indices, range) else list(indices)
    size = batch_size or max(1, start)
    growing = batch_size is None
    pos = 0
    while pos < len(todo):
        chunk = list(todo[pos:pos + size])
        try:
            result = fn(chunk)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch_size is not None:
                raise DeviceError(f"out of {device.type} memory at batch size {len(chunk)}",
                                  hint="lower --batch-size, or use --batch-size auto") from None
            if len(chunk) == 1:
                raise DeviceError(f"out of {device.type} memory with a single image",
                                  hint="try --dtype bf16, or another device") from None
            size = max(1, len(chunk) // 2)
            growing = False
            continue
        yield chunk, result
        pos += len(chunk)
        if growing:
            size = min(cap, size * 2)


class _Worker:
    """A daemon thread that runs one call at a time with one intra-op thread (daemon: a signal or
    Ctrl-C never waits for the part it is computing)."""

    def __init__(self, name: str):
        self.jobs: "queue.SimpleQueue[tuple[Callable[[], object], Future]]" = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        torch.set_num_threads(1)
        while True:
            call, future = self.jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # handed to the caller, which raises it
                    future.set_exception(exc)

    def submit(self, call: Callable[[], object]) -> Future:
        future: Future = Future()
        self.jobs.put((call, future))
        return future


_workers: list[_Worker] = []


def across_cores(fn: Callable[[list[int]], Tensor], device: torch.device) -> Callable[[list[int]], Tensor]:
    """``fn`` (image indices -> a tensor with one row per image) split across the CPU's cores: the
    indices are cut into one part per intra-op thread, the parts run at the same time, each with
    one thread (one part in the calling thread, the rest in daemon worker threads), and the results
    are concatenated in order.

    On a CPU this beats one call with several intra-op threads: those threads meet at a barrier
    after every operator (a VDVAE cifar10 pass has ~1,000), and a part per core has none. It
    needs what the commands already guarantee: image ``i`` depends only on ``(seed, i)``, never on
    which other images share its batch. The same ``fn`` runs unchanged on a GPU, with one thread,
    or for a single image."""
    if device.type != "cpu":
        return fn

    def split(indices: list[int]) -> Tensor:
        threads = torch.get_num_threads()
        k = min(threads, len(indices))
        if k < 2:
            return fn(indices)
        bounds = [len(indices) * j // k for j in range(k + 1)]
        parts = [list(indices[bounds[j]:bounds[j + 1]]) for j in range(k)]
        while len(_workers) < k - 1:
            _workers.append(_Worker(f"vdvae-part-{len(_workers) + 1}"))
        torch.set_num_threads(1)
        try:
            futures = [w.submit(functools.partial(fn, part)) for w, part in zip(_workers, parts[1:])]
            first = fn(parts[0])
            return torch.cat([first, *(f.result() for f in futures)])
        finally:
            torch.set_num_threads(threads)

    return split


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively, so that bf16 autocast speeds training up: a
    CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX (oneDNN then uses bf16 kernels)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
