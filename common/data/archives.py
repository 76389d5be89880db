"""Fetching: downloading files and unpacking archives safely.

Nothing half-done ever looks complete: downloads stream into ``<name>.part`` and
are renamed when finished; archives are checked member by member before anything
is written, unpacked into a temporary sibling folder, and only then moved into place.
"""
from __future__ import annotations

import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath


from common.io import disk_full_message, folder_swapped_in, is_disk_full


class DownloadError(RuntimeError):
    """A download failed; the message says why and what to do."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder, or is a link or device."""


def download_url(url: str, dest: Path, timeout: float = 60) -> Path:
    """Stream ``url`` into ``dest`` (via ``dest.part``); an existing complete ``dest`` is kept."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    print(f"Downloading {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            expected = response.headers.get("Content-Length")
            shutil.copyfileobj(response, out, length=1 << 20)
        if expected is not None and part.stat().st_size != int(expected):
            raise DownloadError(f"Download of {url} stopped early ({part.stat().st_size} of {expected} bytes). Run again.")
        part.replace(dest)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url} answered HTTP {exc.code} ({exc.reason}). Check the address, or try later.") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"Could not reach {url} ({reason}). Check the network connection (on Kaggle: "
                            "Settings > Internet on), or download the file by hand and put it at "
                            f"{dest}.") from exc
    except OSError as exc:
        if is_disk_full(exc):
            raise DownloadError(disk_full_message(dest.parent)) from exc
        raise
    finally:
        part.unlink(missing_ok=True)
    return dest


def _check_member_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive.name} holds an absolute path ({name!r}): refusing to extract it.")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive.name} holds a path that leaves the target folder ({name!r}): refusing to extract it.")


def check_archive(archive: Path) -> None:
    """Raise :class:`UnsafeArchiveError` unless every member is a plain file or folder inside the target."""
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member_name(info.filename, archive)
                mode = info.external_attr >> 16
                if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):
                    raise UnsafeArchiveError(f"{archive.name} holds a link or special file ({info.filename!r}): refusing to extract it.")
        return
    try:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                _check_member_name(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(f"{archive.name} holds a link or special file ({member.name!r}): refusing to extract it.")
    except (tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive, or it is truncated. Delete it and download again.") from exc


def safe_extract(archive: Path, dest: Path) -> Path:
    """Unpack ``archive`` into the new folder ``dest`` after checking every member.

    On any failure nothing is left at ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    check_archive(archive)
    try:
        with folder_swapped_in(dest) as tmp:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive) as tf:
                    # The "data" filter (Python 3.11.4+) is a second guard behind check_archive.
                    tf.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{archive} is damaged (probably a partial download). Delete it and run again.") from exc
    except OSError as exc:
        if is_disk_full(exc):
            raise DownloadError(disk_full_message(dest.parent)) from exc
        raise
    return dest


def remove_stale_partials(folder: Path, name: str) -> None:
    """Delete what interrupted runs left of ``name``: ``name*.part`` files and ``.name-*`` folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for leftover in folder.glob(f"{name}*.part"):
        leftover.unlink(missing_ok=True)
    for leftover in folder.glob(f".{name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
