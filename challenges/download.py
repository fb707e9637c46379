"""Fetching MICO challenges and their base datasets.

Sources
- default: the public Hugging Face mirror of the challenge trees (:data:`HF_REPOS`), through
  ``huggingface_hub.snapshot_download`` (it handles resume, integrity and caching);
- ``url``: an original competition archive (``cifar10.zip`` / ``purchase100.zip``);
- the base dataset archive of each track (:data:`DATASET_SOURCES`).

Guarantees
- downloads stream into ``<dest>.part``, resume with an HTTP Range request, are checked
  against an md5 when one is known, and only then take their final name;
- archives are checked member by member (no absolute paths, ``..`` components, links of any
  kind, device files: MICO's archives hold only folders and regular files) before anything is
  written, extracted into a staging folder inside the track folder, and moved into place by
  ``os.rename`` (atomic on one file system); a hub snapshot holding a link is refused too;
- a scenario folder or base dataset therefore either is complete or is absent, so a rerun
  skips what is present and fetches nothing when everything is; a run that places nothing
  removes the track folder it created, if empty.

Every expected failure raises :class:`DownloadError` (or a subclass) with a one-line message
that says what could not be fetched and how to proceed.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import requests
import urllib3
from tqdm import tqdm

from .fileio import file_digest, one_line, place
from .tracks import check_scenario, get_track, load_params, scenario_names

HF_REPOS = {"cifar10": "szanella/MICO-CIFAR10", "purchase100": "szanella/MICO-purchase100"}

# Original archives (microsoft/MICO starting-kit notebooks) and their md5 (microsoft/MICO md5sums.md).
CHALLENGE_URLS = {
    "cifar10": "https://membershipinference.blob.core.windows.net/mico/cifar10.zip",
    "purchase100": "https://membershipinference.blob.core.windows.net/mico/purchase100.zip",
}
KNOWN_MD5 = {
    "cifar10.zip": "c615b172eb42aac01f3a0737540944b1",
    "purchase100.zip": "67eba1f88d112932fe722fef85fb95fd",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
}


@dataclass(frozen=True)
class DatasetSource:
    url: str
    md5: str | None


DATASET_SOURCES = {
    "cifar10": DatasetSource(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", KNOWN_MD5["cifar-10-python.tar.gz"]
    ),
    # No published checksum for this one; the loader validates its shape instead.
    "purchase100": DatasetSource("https://github.com/privacytrustlab/datasets/raw/master/dataset_purchase.tgz", None),
}

STAGING = ".staging"  # hub downloads (kept after a failure so that the hub can resume)
EXTRACT = ".extract"  # archive extraction (always removed)
SYNTHETIC_HINT = "rerun with --synthetic for an offline synthetic challenge"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """An expected failure; the message is one line."""

    def __init__(self, message: str):
        super().__init__(one_line(message, limit=None))


class FetchError(DownloadError):
    """``url`` could not be fetched (network, HTTP status, interrupted transfer)."""

    def __init__(self, url: str, reason: str, hint: str | None = None):
        self.url, self.reason, self.hint = url, one_line(reason, limit=None), hint
        msg = f"could not fetch {url}: {self.reason}"
        super().__init__(f"{msg}; {hint}" if hint else msg)

    def with_hint(self, hint: str) -> FetchError:
        return FetchError(self.url, self.reason, hint)


class ChecksumError(DownloadError):
    pass


class UnsafeArchiveError(DownloadError):
    def __init__(self, archive: str, member: str, why: str):
        self.archive, self.member = archive, member
        super().__init__(f"unsafe archive {archive}: member {member!r} {why}; nothing was placed")


def info(msg: str) -> None:
    print(msg, flush=True)


def url_filename(url: str, default: str) -> str:
    name = posixpath.basename(unquote(urlparse(url).path))
    return name if name and name not in (".", "..") else default


def _reason(exc: BaseException) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason or ''}".strip()
    if isinstance(exc, requests.Timeout):
        return "timed out"
    m = re.search(r"\[Errno -?\d+\] [^'\")\n]+", str(exc))
    if m:
        return one_line(m.group(0))
    text = one_line(str(exc))
    m = re.search(r"(Connection broken: [^'\")(]+|Connection refused|Name or service not known)", text)
    if m:
        return m.group(0).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Resumable, checksummed download
# ---------------------------------------------------------------------------------------------


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) of a Content-Range header ('bytes 10-99/100' or 'bytes */100')."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _body(r: requests.Response) -> Iterable[bytes]:
    """The response body as sent (no content decoding), in pieces as they arrive, so that an
    interrupted transfer keeps every byte received (iter_content drops a partial chunk)."""
    read1 = getattr(r.raw, "read1", None)
    if read1 is None:  # urllib3 < 2
        yield from r.raw.stream(1 << 16, decode_content=False)
        return
    while True:
        chunk = read1(CHUNK, decode_content=False)
        if not chunk:
            return
        yield chunk


def _transfer(session: requests.Session, url: str, part: str, timeout, progress: bool) -> bool:
    """One GET into ``part`` (resuming from its size). True when done, False to restart from 0."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 416 and offset:
            _, total = _content_range(r.headers.get("Content-Range"))
            return total == offset  # the part already holds the whole file; else start again
        r.raise_for_status()
        if r.status_code == 206:
            start, _ = _content_range(r.headers.get("Content-Range"))
            if start != offset:
                return False
        else:  # 200: the whole file, whether or not we asked for a range
            offset = 0
        length = r.headers.get("Content-Length")
        identity = r.headers.get("Content-Encoding", "identity").lower() in ("", "identity")
        total = offset + int(length) if length and length.isdigit() and identity else None
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=os.path.basename(part[: -len(".part")]),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for chunk in _body(r):
                try:
                    f.write(chunk)
                except OSError as e:  # a full disk: keep what was written, for a resume
                    raise DownloadError(
                        f"{part}: cannot write ({e.strerror or e}); free some space, then rerun to resume"
                    ) from None
                bar.update(len(chunk))
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise FetchError(url, f"connection closed after {size} of {total} bytes (rerun to resume)")
    return True


def download_file(
    url: str,
    dest: str,
    md5: str | None = None,
    *,
    session: requests.Session | None = None,
    progress: bool = True,
    timeout=(15, 60),
) -> str:
    """Download ``url`` to ``dest`` through ``dest + '.part'``; returns ``dest``.

    An existing ``dest`` is kept (after an md5 check when ``md5`` is given). A ``.part`` left by an
    interrupted run is resumed with a Range request; a server answering 200 restarts the file, a
    416 means the part is already complete (when its size is the file's) or restarts it. Raises
    :class:`FetchError` (the part is kept for resuming) or :class:`ChecksumError` (it is deleted).
    """
    md5 = md5.lower() if md5 else None
    if os.path.isfile(dest):
        _check_md5(
            dest, md5, f"checksum mismatch for {dest} (from {url})", "the file was deleted, rerun to download it again"
        )
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    own = session is None
    session = session or requests.Session()
    try:
        _fetch_part(session, url, part, timeout, progress)
    finally:
        if own:
            session.close()
    _check_md5(part, md5, f"checksum mismatch for {url}", "the download was deleted, rerun to fetch it again")
    place(part, dest)  # flushed first: a power loss never leaves a truncated file under its final name
    return dest


def _check_md5(path: str, md5: str | None, what: str, then: str) -> None:
    """Nothing without ``md5``; else delete ``path`` and raise ChecksumError if its md5 differs."""
    if md5:
        actual = file_digest(path, "md5")
        if actual != md5:
            os.remove(path)
            raise ChecksumError(f"{what}: expected md5 {md5}, got {actual}; {then}")


def _fetch_part(session, url: str, part: str, timeout, progress: bool) -> None:
    """Transfer ``url`` into ``part`` (resuming it), restarting at most twice on inconsistent ranges."""
    try:
        for _ in range(3):
            if _transfer(session, url, part, timeout, progress):
                return
            os.remove(part)
        raise FetchError(url, "the server keeps answering range requests inconsistently")
    except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
        reason = _reason(e)
        kept = os.path.getsize(part) if os.path.exists(part) else 0
        if kept:
            reason += f" ({kept} bytes kept in {part}, rerun to resume)"
        raise FetchError(url, reason) from None


# ---------------------------------------------------------------------------------------------
# Safe extraction
# ---------------------------------------------------------------------------------------------


def _member_path(archive: str, name: str) -> str | None:
    """The member's normalised relative path ('a/b'), None for the root itself; raises if unsafe."""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        raise UnsafeArchiveError(archive, name, "has an absolute path")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(archive, name, "has a '..' component")
    return "/".join(parts) or None


def _refuse_link(archive: str, name: str, target: str) -> None:
    # MICO's archives hold no links; one that resolves inside the staging folder today may lead
    # outside once its folder is moved into place, so none is accepted.
    raise UnsafeArchiveError(archive, name, f"is a link (to {target!r}); MICO's archives hold none")


def _zip_plan(archive: str, zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    plan = []
    for zi in zf.infolist():
        path = _member_path(archive, zi.filename)
        if path is None:
            continue
        mode = zi.external_attr >> 16
        if stat.S_ISLNK(mode):
            _refuse_link(archive, zi.filename, zf.read(zi).decode("utf-8", "replace"))
        elif mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeArchiveError(archive, zi.filename, "is a device, fifo or socket")
        plan.append((zi, path))
    return plan


def _tar_plan(archive: str, tf: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, str]]:
    plan = []
    for ti in tf.getmembers():
        path = _member_path(archive, ti.name)
        if path is None:
            continue
        if ti.issym() or ti.islnk():
            _refuse_link(archive, ti.name, ti.linkname)
        elif not (ti.isfile() or ti.isdir()):
            raise UnsafeArchiveError(archive, ti.name, "is a device, fifo or other special file")
        plan.append((ti, path))
    return plan


def safe_extract(archive: str, dest: str, select: Callable[[str], bool] | None = None) -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) ``archive`` into ``dest``, checking every member first.

    ``select`` (optional) picks members by normalised path ('a/b/c'); all are checked either way.
    Raises :class:`UnsafeArchiveError` naming the archive and the offending member before
    anything is written, or :class:`DownloadError` for an unreadable archive.
    """
    os.makedirs(dest, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for zi, path in _zip_plan(archive, zf):
                    if select is not None and not select(path):
                        continue
                    target = os.path.join(dest, *path.split("/"))
                    if zi.is_dir():
                        os.makedirs(target, exist_ok=True)
                        continue
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with zf.open(zi) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                plan = _tar_plan(archive, tf)
                chosen = [ti for ti, path in plan if select is None or select(path)]
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                try:
                    tf.extractall(dest, members=chosen, **kwargs)
                except getattr(tarfile, "FilterError", ()) as e:  # Python >= 3.11.4 / 3.12
                    member = getattr(getattr(e, "tarinfo", None), "name", "?")
                    raise UnsafeArchiveError(archive, member, one_line(str(e))) from None
        else:
            raise DownloadError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, UnicodeDecodeError) as e:
        raise DownloadError(f"{archive}: corrupt archive ({type(e).__name__}: {e})") from None
    except OSError as e:  # a full disk, permissions
        raise DownloadError(
            f"{dest}: cannot extract {archive} there ({e.strerror or e}); free some space "
            "or fix the permissions, then rerun"
        ) from None


@contextlib.contextmanager
def _unpacking(archive: str, tdir: str, keep_archive: bool):
    """A fresh staging folder ``<tdir>/.extract`` for unpacking ``archive``; always removed after.

    On success the archive is deleted unless kept; on a :class:`DownloadError` (unsafe, corrupt or
    wrong archive) it is deleted too unless kept, and the message says which.
    """
    staging = os.path.join(tdir, EXTRACT)
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    os.makedirs(staging)
    try:
        yield staging
    except DownloadError as e:
        if keep_archive:
            e.args = (f"{e}; delete the archive and rerun",)
        else:
            os.remove(archive)
            e.args = (f"{e}; the archive was deleted",)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        os.remove(archive)


# ---------------------------------------------------------------------------------------------
# Challenge trees
# ---------------------------------------------------------------------------------------------


def track_dir(data_dir: str, track: str) -> str:
    get_track(track)
    return os.path.join(data_dir, track)


def requested_scenarios(track: str, scenarios: Iterable[str] | None = None) -> list[str]:
    names = scenario_names(track)
    if scenarios is None:
        return names
    try:
        return [check_scenario(track, s) for s in scenarios]
    except ValueError as e:
        raise DownloadError(str(e)) from None


def missing_scenarios(data_dir: str, track: str, scenarios: Iterable[str] | None = None) -> list[str]:
    """Requested scenario folders not in place (they only appear complete, by rename)."""
    tdir = track_dir(data_dir, track)
    return [s for s in requested_scenarios(track, scenarios) if not os.path.isdir(os.path.join(tdir, s))]


def check_not_synthetic(data_dir: str, track: str) -> None:
    """Refuse to mix real downloads into a synthetic challenge tree."""
    try:
        synthetic = load_params(data_dir, track).synthetic
    except ValueError as e:  # a challenge.json we cannot read: the user has to look at it
        raise DownloadError(str(e)) from None
    if synthetic:
        raise DownloadError(
            f"{track_dir(data_dir, track)} holds a synthetic challenge; use another --data-dir "
            "(or delete that folder) to download the real one"
        )


def _copy_hint(what: str, where: str) -> str:
    return f"{SYNTHETIC_HINT}, or copy {what} into {where}"


def _nothing_to_fetch(track: str, scenarios, tdir: str) -> None:
    info(f"{track}: {', '.join(requested_scenarios(track, scenarios))} already in {tdir}; nothing to fetch")


def _place(src: str, dst: str) -> None:
    place(src, dst)  # same file system (staging lives in the track folder): atomic, and flushed first
    info(f"placed {dst}")


def _refuse_links(root: str) -> None:
    """Refuse a downloaded tree holding a symbolic link: MICO's trees hold none, and a link may
    resolve outside the track folder once the tree is moved into place."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                raise DownloadError(
                    f"{p}: a link (to {os.readlink(p)!r}) in the downloaded tree, which MICO's "
                    f"trees never hold; nothing was placed; delete {root} and rerun"
                )


@contextlib.contextmanager
def removing_if_empty(folder: str):
    """On the way out, remove ``folder`` and the parents this block created, if they are empty:
    a run that placed nothing (offline, refused archive) leaves no empty track folder behind."""
    created, p = [], os.path.abspath(folder)
    while not os.path.exists(p):
        created.append(p)
        p = os.path.dirname(p)
    try:
        yield
    finally:
        for p in created:
            try:
                os.rmdir(p)
            except OSError:  # not empty (a partial download kept for resuming) or already gone
                break


def _hub_snapshot_download(**kwargs):
    from huggingface_hub import snapshot_download

    return snapshot_download(**kwargs)


# The hub call; tests replace it with a stand-in that lays out a small tree in ``local_dir``.
HUB_DOWNLOAD: Callable[..., object] = _hub_snapshot_download


def _hub_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [OSError, ValueError, requests.RequestException]
    try:
        from huggingface_hub import errors as hf_errors

        errs += [getattr(hf_errors, n) for n in ("HfHubHTTPError", "XetDownloadError") if hasattr(hf_errors, n)]
    except ImportError:
        pass
    for mod in ("httpx2", "httpx"):  # huggingface_hub's HTTP client, depending on its version
        try:
            errs.append(__import__(mod).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


def hub_url(repo_id: str) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/datasets/{repo_id}"


def fetch_challenge_hub(
    data_dir: str,
    track: str,
    scenarios: Iterable[str] | None = None,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    snapshot_download: Callable[..., object] | None = None,
) -> list[str]:
    """Fetch the missing scenario folders from the Hugging Face mirror; returns those placed.

    Files land in ``<data-dir>/<track>/.staging/`` (kept after a failure so that the hub resumes)
    and each scenario folder is renamed into place once the snapshot has completed.
    """
    tdir = track_dir(data_dir, track)
    missing = missing_scenarios(data_dir, track, scenarios)
    if not missing:
        _nothing_to_fetch(track, scenarios, tdir)
        return []
    repo_id = repo_id or HF_REPOS[track]
    staging = os.path.join(tdir, STAGING)
    os.makedirs(staging, exist_ok=True)
    fetch = snapshot_download if snapshot_download is not None else HUB_DOWNLOAD
    hint = _copy_hint(f"the scenario folders ({', '.join(missing)})", tdir)
    info(f"fetching {', '.join(missing)} from {hub_url(repo_id)}")
    try:
        fetch(
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            allow_patterns=[f"{s}/*" for s in missing],
            local_dir=staging,
        )
    except _hub_errors() as e:
        with contextlib.suppress(OSError):
            os.rmdir(staging)  # only when empty: a partial snapshot stays for the hub to resume
        raise FetchError(hub_url(repo_id), _reason(e), hint) from None
    absent = [
        s for s in missing if not os.path.isdir(os.path.join(staging, s)) or not os.listdir(os.path.join(staging, s))
    ]
    if absent:
        raise DownloadError(f"{hub_url(repo_id)} has no folder {absent[0]}/; {hint}")
    for s in missing:
        _refuse_links(os.path.join(staging, s))
    for s in missing:
        _place(os.path.join(staging, s), os.path.join(tdir, s))
    shutil.rmtree(staging, ignore_errors=True)
    return missing


def _fetch_and_unpack(
    url: str,
    archive: str,
    md5: str | None,
    keep_archive: bool,
    hint: str,
    unpack: Callable[[str], None],
    session,
    progress: bool,
) -> None:
    """Download ``url`` to ``archive`` (resumable, md5-checked), then ``unpack(staging)``: extract
    into a staging folder beside it and move what it holds into place. The staging folder is always
    removed, the archive too unless kept."""
    info(f"fetching {url}")
    try:
        download_file(url, archive, md5, session=session, progress=progress)
    except FetchError as e:
        raise e.with_hint(hint) from None
    with _unpacking(archive, os.path.dirname(archive), keep_archive) as staging:
        unpack(staging)


def fetch_challenge_archive(
    data_dir: str,
    track: str,
    url: str,
    md5: str | None = None,
    scenarios: Iterable[str] | None = None,
    *,
    keep_archive: bool = False,
    session: requests.Session | None = None,
    progress: bool = True,
) -> list[str]:
    """Fetch an original MICO archive and place its missing scenario folders; returns those placed.

    ``url`` may be ``"original"``: the competition's own URL (:data:`CHALLENGE_URLS`). The archive
    may hold ``<track>/<scenario>/...`` (the original layout) or ``<scenario>/...``.
    Without ``md5``, the known checksum of ``cifar10.zip`` / ``purchase100.zip`` is used when the
    URL's file name is one of those.
    """
    tdir = track_dir(data_dir, track)
    missing = missing_scenarios(data_dir, track, scenarios)
    if not missing:
        _nothing_to_fetch(track, scenarios, tdir)
        return []
    url = CHALLENGE_URLS[track] if url == "original" else url
    name = url_filename(url, f"{track}.zip")
    archive = os.path.join(tdir, name)

    def select(path: str) -> bool:
        parts = path.split("/")
        return parts[0] in missing or (parts[0] == track and (len(parts) == 1 or parts[1] in missing))

    def unpack(staging: str) -> None:
        safe_extract(archive, staging, select)
        sources = {}
        for s in missing:
            for src in (os.path.join(staging, track, s), os.path.join(staging, s)):
                if os.path.isdir(src):
                    sources[s] = src
                    break
            else:
                raise DownloadError(
                    f"{archive} holds no folder {track}/{s}/ or {s}/; check the URL (or pass --scenario)"
                )
        for s in missing:
            _place(sources[s], os.path.join(tdir, s))

    hint = f"{SYNTHETIC_HINT}, or copy {name} to {archive} (or the scenario folders into {tdir})"
    _fetch_and_unpack(url, archive, md5 or KNOWN_MD5.get(name), keep_archive, hint, unpack, session, progress)
    return missing


# ---------------------------------------------------------------------------------------------
# Base datasets
# ---------------------------------------------------------------------------------------------


def dataset_path(data_dir: str, track: str) -> str:
    return os.path.join(track_dir(data_dir, track), get_track(track).dataset)


def fetch_dataset(
    data_dir: str,
    track: str,
    url: str | None = None,
    md5: str | None = None,
    *,
    keep_archive: bool = False,
    session: requests.Session | None = None,
    progress: bool = True,
) -> str | None:
    """Fetch and extract the track's base dataset unless present; returns its path when placed.

    Without ``md5``, the known checksum is used for the default URL or a file name in
    :data:`KNOWN_MD5`.
    """
    final = dataset_path(data_dir, track)
    if os.path.exists(final):
        info(f"{track}: base dataset already at {final}")
        return None
    tdir = os.path.dirname(final)
    source = DATASET_SOURCES[track]
    url = url or source.url
    want = os.path.basename(final)
    name = url_filename(url, f"{want}.tgz")
    if not md5:
        md5 = source.md5 if url == source.url else KNOWN_MD5.get(name)
    archive = os.path.join(tdir, name)

    def unpack(staging: str) -> None:
        safe_extract(archive, staging)
        found = os.path.join(staging, want)
        if not os.path.exists(found):  # tolerate extra top folders
            found = next(
                (os.path.join(root, n) for root, dirs, files in os.walk(staging) for n in dirs + files if n == want),
                None,
            )
        if found is None:
            raise DownloadError(f"{archive} holds no {want}; check --dataset-url, or copy {want} to {final}")
        _place(found, final)

    hint = f"{SYNTHETIC_HINT}, or copy {name} to {archive} (or the extracted {want} to {final})"
    _fetch_and_unpack(url, archive, md5, keep_archive, hint, unpack, session, progress)
    return final
