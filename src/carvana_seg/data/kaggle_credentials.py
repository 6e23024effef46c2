"""Where the Kaggle credentials come from, found the way the installed ``kaggle`` package (2.2.x) finds them.

``KaggleApi.authenticate`` tries, in this order: an access token (the ``KAGGLE_API_V1_TOKEN`` file inside a Kaggle
notebook; ``KAGGLE_API_TOKEN``, a token or the path of a file holding one; ``~/.kaggle/access_token`` or
``access_token.txt``), then the legacy API key (``username`` and ``key`` from ``kaggle.json`` in
``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else ``$XDG_CONFIG_HOME/kaggle``, each overridden by
``KAGGLE_USERNAME``/``KAGGLE_KEY``), then the OAuth credentials ``kaggle auth login`` saves in
``~/.kaggle/credentials.json``. ``check_credentials`` mirrors that without the network, so a missing or half-set
credential is reported before anything is downloaded or uploaded, naming what to set. Secret values are never
returned, logged or put in a message; ``scrub`` removes every one of them from third-party text.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from carvana_seg.pipeline.errors import CredentialsError

NO_CREDENTIALS = (
    "Kaggle credentials not found: run `kaggle auth login`, or set KAGGLE_API_TOKEN (or save the token in "
    "~/.kaggle/access_token), or put your API token in ~/.kaggle/kaggle.json (chmod 600; or in $KAGGLE_CONFIG_DIR) "
    "or set KAGGLE_USERNAME and KAGGLE_KEY"
)
OAUTH_FILE = "~/.kaggle/credentials.json"
TOKEN_FILES = ("~/.kaggle/access_token", "~/.kaggle/access_token.txt")


def config_dir() -> Path:
    """The directory the kaggle package reads ``kaggle.json`` from (``KaggleApi.config_dir``)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path(os.path.expanduser("~")) / ".kaggle"
    if sys.platform.startswith("linux") and not home.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return Path(xdg) / "kaggle"
    return home


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _tokens() -> list[tuple[str, str]]:
    """(where, token) of every access token the kaggle package would try, in its order."""
    found = []
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") and os.environ.get("KAGGLE_DATA_PROXY_URL"):
        path = os.environ.get("KAGGLE_API_V1_TOKEN", "")
        if path and Path(path).is_file():
            found.append(("the Kaggle notebook token (KAGGLE_API_V1_TOKEN)", _read(Path(path))))
    value = os.environ.get("KAGGLE_API_TOKEN", "")
    if value:
        is_file = Path(value).exists()
        found.append(("the token file named by KAGGLE_API_TOKEN" if is_file else "environment (KAGGLE_API_TOKEN)",
                      _read(Path(value)) if is_file else value))
        if is_file and not found[-1][1]:
            found.pop()  # the kaggle package stops looking for tokens here: an empty file is no token
            return found
    for name in TOKEN_FILES:
        path = Path(os.path.expanduser(name))
        if path.is_file():
            found.append((str(path), _read(path)))
    return [(where, token) for where, token in found if token]


def _kaggle_json() -> tuple[Path, dict]:
    """``kaggle.json``'s path and values ({} when absent); CredentialsError when it exists but is unusable."""
    path = config_dir() / "kaggle.json"
    if not path.is_file():
        return path, {}
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"{path}: unreadable Kaggle token file ({type(exc).__name__})") from None
    if not isinstance(values, dict):
        raise CredentialsError(f"{path}: Kaggle token file is not a JSON object")
    return path, values


def _legacy_key() -> str:
    """Where the legacy username and key come from; CredentialsError naming the half that is missing."""
    path, values = _kaggle_json()
    user_env, key_env = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    user, key = user_env or values.get("username"), key_env or values.get("key")
    if user and key:
        if user_env and key_env:
            return "environment (KAGGLE_USERNAME, KAGGLE_KEY)"
        if not (user_env or key_env):
            return str(path)
        return f"{'KAGGLE_USERNAME' if user_env else 'KAGGLE_KEY'} with {path}"
    if key_env:
        raise CredentialsError("KAGGLE_KEY is set but KAGGLE_USERNAME is not (and no kaggle.json gives a username): "
                               "set KAGGLE_USERNAME to your Kaggle user name")
    if user_env:
        raise CredentialsError("KAGGLE_USERNAME is set but KAGGLE_KEY is not (and no kaggle.json gives a key): "
                               "set KAGGLE_KEY to your API key")
    if values:
        raise CredentialsError(f"{path}: Kaggle token file lacks 'username' and 'key'")
    raise CredentialsError(NO_CREDENTIALS)


def _oauth() -> str | None:
    """``credentials.json`` of ``kaggle auth login`` when it holds a refresh token."""
    path = Path(os.path.expanduser(OAUTH_FILE))
    try:
        values = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return None
    return f"{path} (kaggle auth login)" if isinstance(values, dict) and values.get("refresh_token") else None


def check_credentials() -> str:
    """Where the Kaggle credentials come from (never their value); raise CredentialsError when there are none."""
    tokens = _tokens()
    if tokens:
        return tokens[0][0]
    try:
        return _legacy_key()
    except CredentialsError:
        oauth = _oauth()
        if oauth:
            return oauth
        raise


def secrets() -> list[str]:
    """Every secret value a credential source holds, to scrub from any text built from third-party output."""
    values = [os.environ.get("KAGGLE_KEY", ""), os.environ.get("KAGGLE_API_TOKEN", "")]
    values += [token for _where, token in _tokens()]
    for path, keys in ((config_dir() / "kaggle.json", ("key",)),
                       (Path(os.path.expanduser(OAUTH_FILE)), ("refresh_token", "access_token"))):
        try:
            data = json.loads(path.read_text())
            values += [str(data.get(k, "")) for k in keys]
        except (OSError, ValueError, AttributeError):
            pass
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def scrub(text: str) -> str:
    """``text`` with every secret replaced by ``***``, on one line, at most 300 characters."""
    for secret in secrets():
        text = text.replace(secret, "***")
    return " ".join(text.split())[:300]
