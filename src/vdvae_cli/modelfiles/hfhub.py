"""``hf://owner/repo[/file.safetensors][@revision]`` references through ``huggingface_hub``: its
cache (``HF_HOME``, ``HF_HUB_CACHE``), offline mode (``HF_HUB_OFFLINE``) and endpoint
(``HF_ENDPOINT``), with its retries quietened and what it fetched verified before it counts."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from .. import __version__
from ..base.errors import CheckpointError, ModelNotFoundError, NetworkError, UsageError
from .transfer import ProgressCallback, _report
from typing import Callable
from .transfer import _discard, verify_download
from .paths import is_offline


DEFAULT_HF_FILENAME = "model.safetensors"


HUB_RETRIES = 1  # huggingface_hub's own retries of a failed Hub request (its default is 5)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, computed like huggingface_hub does but from the current environment."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hf_endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    filename: str = DEFAULT_HF_FILENAME
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{self.repo_id}/{self.filename}{rev}"


_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_hf_ref(ref: str) -> HubRef:
    """``hf://owner/repo[/path/in/repo][@revision]`` -> HubRef (a revision may itself contain ``/``)."""
    if not ref.startswith("hf://"):
        raise UsageError(f"{ref!r} is not an hf:// reference")
    body = ref[len("hf://"):]
    revision = None
    if "@" in body:
        body, _, revision = body.rpartition("@")
        if not revision:
            raise UsageError(f"{ref!r}: empty revision after '@'", hint="use hf://owner/repo[/file]@REVISION")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2 or not all(_REPO_PART.match(p) for p in parts[:2]):
        raise UsageError(
            f"{ref!r} is not a valid Hub reference",
            hint="use hf://owner/repo, hf://owner/repo/file.safetensors or hf://owner/repo@revision",
        )
    filename = "/".join(parts[2:]) or DEFAULT_HF_FILENAME
    return HubRef(f"{parts[0]}/{parts[1]}", filename, revision)


class _CallbackBar:
    """A stand-in for tqdm that forwards byte counts from huggingface_hub to a progress callback."""

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, desc: str | None = None,
                 progress: ProgressCallback | None = None, label: str = "", **kwargs: Any) -> None:
        self.total, self.n, self._progress, self._label = total, initial or 0, progress, label or desc or ""
        _report(self._progress, "download", self._label, self.n, self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        _report(self._progress, "download", self._label, self.n, self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> "_CallbackBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Callable[..., None]:  # set_description, refresh, ...
        return lambda *a, **k: None


class _Never(Exception):
    """Stands in for an exception class an older huggingface_hub lacks."""


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """For our calls into huggingface_hub: its logger is silenced (it logs every retry, "Retrying in
    1s [Retry 1/5]", on stderr), so a failure is our one error line; and it retries a broken Hub
    HUB_RETRIES times instead of five (half a minute of waiting), where its version lets us say so."""
    import logging

    # Everything we call is imported first: huggingface_hub configures its logger as its modules load.
    import huggingface_hub  # noqa: F401
    import huggingface_hub.errors  # noqa: F401
    import huggingface_hub.file_download  # noqa: F401

    hub_http: ModuleType | None = None
    try:
        from huggingface_hub.utils import _http

        hub_http = _http
    except ImportError:
        pass
    base = getattr(hub_http, "_http_backoff_base", None)
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    if hub_http is not None and base is not None:
        def fewer_retries(*args: Any, **kwargs: Any) -> Any:
            kwargs["max_retries"] = min(int(kwargs.get("max_retries", 5)), HUB_RETRIES)
            return base(*args, **kwargs)

        # (monkeypatching huggingface_hub's private function, on purpose and undone below)
        hub_http._http_backoff_base = fewer_retries  # type: ignore[attr-defined]
    try:
        yield
    finally:
        logger.setLevel(level)
        if hub_http is not None and base is not None:
            hub_http._http_backoff_base = base  # type: ignore[attr-defined]  # restored


def _forget_hub_file(path: Path) -> None:
    """Remove a file that failed verification from the Hugging Face cache (its snapshot link and the
    blob it points to), so that the next run downloads it again instead of trusting it."""
    try:
        blob = path.resolve()
    except OSError:
        blob = path
    _discard(path, blob)


def fetch_hub(ref: HubRef, *, force: bool = False, progress: ProgressCallback | None = None) -> Path:
    """``hf_hub_download`` into the standard cache, then verified (a safetensors header that passes
    every check; a file that does not is removed from the cache). Every failure is one typed error."""
    from ..base.safety import clean

    _report(progress, "connect", f"{clean(str(ref))} from the Hugging Face Hub")  # before the first request
    with _quiet_hub():
        path = _hf_download(ref, force=force, progress=progress)
    try:
        verify_download(path, "safetensors", label=clean(str(ref)))
    except CheckpointError:
        _forget_hub_file(path)
        raise
    fetch_companion(ref, force=force)
    return path


def companion_ref(ref: HubRef) -> HubRef | None:
    """Where a model's learned prior sits in its repository: ``NAME.prior.safetensors`` beside
    ``NAME.safetensors`` (the name ``vdvae prior fit`` gives it), at the same revision."""
    name = ref.filename
    if not name.endswith(".safetensors") or name.endswith(".prior.safetensors"):
        return None
    return HubRef(ref.repo_id, name[: -len(".safetensors")] + ".prior.safetensors", ref.revision)


def fetch_companion(ref: HubRef, *, force: bool = False) -> Path | None:
    """The model's learned prior, fetched into the same snapshot folder when its repository has one
    (so ``--prior auto`` finds it beside the model, online or, later, offline); None when it has none
    or it cannot be had now: the model works without it, and the prior's own checks come when it is
    read against the model (:func:`vdvae_cli.modelfiles.priors.read_prior`)."""
    companion = companion_ref(ref)
    if companion is None:
        return None
    if not force:  # known from an earlier request (present, or recorded as missing): no new one
        from huggingface_hub import try_to_load_from_cache

        known = try_to_load_from_cache(companion.repo_id, companion.filename, cache_dir=str(hub_cache_dir()),
                                       revision=companion.revision)
        if isinstance(known, str):
            return Path(known)
        if known is not None:  # huggingface_hub's marker for a file the repository does not have
            return None
    try:
        with _quiet_hub():
            return _hf_download(companion, force=force, progress=None)
    except (ModelNotFoundError, NetworkError, UsageError):
        return None


def _hf_download(ref: HubRef, *, force: bool, progress: ProgressCallback | None) -> Path:
    import functools
    import inspect

    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    offline = is_offline()
    kwargs: dict[str, Any] = dict(
        revision=ref.revision, cache_dir=str(hub_cache_dir()), endpoint=hf_endpoint(),
        local_files_only=offline, force_download=force and not offline,
        library_name="vdvae-cli", library_version=__version__,
    )
    if "tqdm_class" in inspect.signature(hf_hub_download).parameters:  # no progress bars of its own, ever
        kwargs["tqdm_class"] = functools.partial(_CallbackBar, progress=progress, label=ref.filename.split("/")[-1])
    remote_missing = getattr(hf_errors, "RemoteEntryNotFoundError", None) or hf_errors.EntryNotFoundError
    invalid = getattr(hf_errors, "HFValidationError", None) or _Never
    where = hf_endpoint() or "https://huggingface.co"
    try:
        return Path(hf_hub_download(ref.repo_id, ref.filename, **kwargs))
    except invalid as exc:
        raise UsageError(f"{ref} is not a valid Hub reference: {exc}") from None
    except hf_errors.LocalEntryNotFoundError:
        if offline:
            raise ModelNotFoundError(
                f"{ref} is not in the Hugging Face cache ({hub_cache_dir()}) and HF_HUB_OFFLINE is set",
                hint=f"unset HF_HUB_OFFLINE and run `vdvae download {ref}` once",
            ) from None
        raise NetworkError(
            f"cannot reach the Hugging Face Hub at {where} and {ref} is not cached",
            hint=f"check the network (or HF_ENDPOINT), then run `vdvae download {ref}`",
        ) from None
    except hf_errors.GatedRepoError:
        raise ModelNotFoundError(f"{ref}: the repository {ref.repo_id} is gated",
                                 hint="accept its terms on the Hub and log in with `hf auth login`") from None
    except hf_errors.RepositoryNotFoundError:
        raise ModelNotFoundError(f"{ref}: no repository {ref.repo_id} on {where}",
                                 hint="check the name; private repositories need `hf auth login`") from None
    except hf_errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"{ref}: repository {ref.repo_id} has no revision {ref.revision!r}") from None
    except remote_missing:
        raise ModelNotFoundError(f"{ref}: repository {ref.repo_id} has no file {ref.filename!r}",
                                 hint="name the file: hf://owner/repo/path/to/file.safetensors") from None
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise NetworkError(f"the Hub at {where} answered HTTP {status} for {ref}",
                           hint="try again later, or check HF_ENDPOINT") from None
    except (OSError, ValueError) as exc:  # connection/proxy/SSL errors, bad metadata
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NetworkError(f"cannot download {ref}: {first}",
                           hint="check the network (or HF_ENDPOINT); HF_HUB_OFFLINE=1 uses the cache only") from None
    except Exception as exc:  # httpx errors are not OSErrors
        if type(exc).__module__.split(".")[0].startswith("httpx"):
            raise NetworkError(f"cannot download {ref}: {exc}", hint="check the network (or HF_ENDPOINT)") from None
        raise


def hub_cached_path(ref: HubRef) -> Path | None:
    """The cached file of ``ref`` if the Hugging Face cache holds it (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo_id, ref.filename, cache_dir=str(hub_cache_dir()), revision=ref.revision)
    return Path(found) if isinstance(found, str) else None
