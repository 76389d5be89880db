"""Kaggle: credentials and downloads, with errors that say what to do.

The ``kaggle`` package authenticates when it is imported (and prints a long
sign-up text when it can't), so it is imported only inside
:func:`download_kaggle_dataset`, quietly, after the credentials were found.
Credentials are never printed, logged or written into run records.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

from common.data.archives import DownloadError
from common.io import disk_full_message, is_disk_full, write_atomic


class KaggleCredentialsError(RuntimeError):
    """No usable Kaggle credentials; the message says where to put them."""


class KaggleAccessError(RuntimeError):
    """Kaggle refused or could not serve the request; the message says why and what to do."""


def kaggle_config_dir() -> Path:
    return Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")).expanduser()


def _from_colab_secrets() -> str | None:
    """Copy Kaggle secrets of a Colab notebook into this process's environment (never to disk)."""
    if "google.colab" not in sys.modules:
        return None
    try:
        from google.colab import userdata  # type: ignore
    except ImportError:
        return None
    found = {}
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        try:
            value = userdata.get(name)
        except Exception:  # secret missing, or not shared with this notebook
            continue
        if value:
            found[name] = value
    if "KAGGLE_API_TOKEN" in found or {"KAGGLE_USERNAME", "KAGGLE_KEY"} <= set(found):
        os.environ.update(found)
        return "Colab secret"
    return None


def find_credentials() -> str:
    """Where the Kaggle credentials come from, checked in this order: a Colab secret,
    ``KAGGLE_API_TOKEN``, ``KAGGLE_USERNAME``/``KAGGLE_KEY``, ``~/.kaggle/kaggle.json``,
    ``~/.kaggle/access_token``. Returns a description (never the values)."""
    colab = _from_colab_secrets()
    if colab:
        return colab
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "environment variable KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "environment variables KAGGLE_USERNAME and KAGGLE_KEY"
    config = kaggle_config_dir()
    json_file = config / "kaggle.json"
    if json_file.is_file():
        try:
            content = json.loads(json_file.read_text())
        except (OSError, ValueError) as exc:
            raise KaggleCredentialsError(f"{json_file} is not valid JSON ({exc}). Download a new one from "
                                         "kaggle.com > Settings > API > Create New Token.") from None
        if not (isinstance(content, dict) and content.get("username") and content.get("key")):
            raise KaggleCredentialsError(f"{json_file} lacks a username or key. Download a new one from "
                                         "kaggle.com > Settings > API > Create New Token.")
        if os.name == "posix" and json_file.stat().st_mode & 0o077:
            json_file.chmod(0o600)  # the client warns about readable keys; keep them private
        return str(json_file)
    if (config / "access_token").is_file():
        return str(config / "access_token")
    raise KaggleCredentialsError(_how_to_add_credentials())


def _how_to_add_credentials() -> str:
    config = kaggle_config_dir()
    return ("No Kaggle credentials found. Create a token at kaggle.com > Settings > API, then either:\n"
            "  - on Colab: add a secret named KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY) in the key "
            "panel on the left and allow this notebook to read it;\n"
            "  - set the environment variable KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY);\n"
            f"  - or save kaggle.json as {config / 'kaggle.json'} (chmod 600), for example from a cell:\n"
            "    from common.data.kaggle import save_kaggle_json; save_kaggle_json(\"<username>\", \"<key>\")\n"
            "On Kaggle itself no download is needed: attach the dataset with 'Add Input'.\n"
            "Or set TL_DATASET=demo to run on the offline demo data.")


def save_kaggle_json(username: str, key: str, folder: Path | None = None) -> Path:
    """Write ``kaggle.json`` readable by its owner only (mode 600), atomically."""
    folder = Path(folder) if folder else kaggle_config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    def write_private(tmp: Path) -> None:  # created readable by its owner only, never widened
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            json.dump({"username": username, "key": key}, handle)

    return write_atomic(folder / "kaggle.json", write_private)


def _client():
    """The authenticated Kaggle API client, imported lazily and without its import-time chatter."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
        except ImportError as exc:
            raise KaggleAccessError("The kaggle package is not installed: pip install 'kaggle>=1.6'.") from exc
        api = KaggleApi()
        try:
            api.authenticate()
        except SystemExit:  # kaggle exits instead of raising when it finds no credentials
            raise KaggleCredentialsError(_how_to_add_credentials()) from None
    return api


def _explain_http(status: int | None, slug: str) -> str:
    page = f"https://www.kaggle.com/datasets/{slug}"
    if status == 401:
        return ("Kaggle rejected the credentials (HTTP 401). The token may be expired or mistyped: create a new "
                "one at kaggle.com > Settings > API and replace the old one.")
    if status == 403:
        return (f"Kaggle refused access (HTTP 403): accept the dataset's rules at {page} while signed in, "
                "and make sure your account is verified (phone number).")
    if status == 404:
        return f"Kaggle has no dataset {slug!r} (HTTP 404). Check the name at {page}."
    return f"Kaggle answered HTTP {status} for {slug!r}. Try again later."


def download_kaggle_dataset(slug: str, folder: Path) -> Path:
    """Download ``slug``'s zip archive into ``folder`` and return its path."""
    source = find_credentials()
    print(f"Kaggle credentials: {source}")
    api = _client()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    import requests  # a dependency of kaggle

    try:
        api.dataset_download_files(slug, path=str(folder), quiet=False, unzip=False)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise KaggleAccessError(_explain_http(status, slug)) from None
    except requests.ConnectionError as exc:
        raise DownloadError("Could not reach Kaggle: no network? (On a Kaggle notebook: Settings > Internet on, "
                            "or attach the dataset with 'Add Input' instead.)") from exc
    except OSError as exc:
        if is_disk_full(exc):
            raise DownloadError(disk_full_message(folder)) from exc
        raise
    archive = folder / f"{slug.split('/')[-1]}.zip"
    if not archive.is_file():
        raise DownloadError(f"Kaggle reported success but {archive} is missing. Run again.")
    return archive
