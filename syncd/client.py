"""The running daemon as a client sees it: found through the state folder (``<state>/daemon.json``, which
`syncd run` writes with the address it bound), asked over its HTTP endpoint with the configured bearer token.

`syncd status`, `syncd query`, `syncd mcp` and ``open_index()`` go through here, so while a daemon serves
the store none of them loads the model or opens LanceDB: the daemon already holds both, warm. This module
imports neither (only httpx), which is what keeps `syncd query` well under a second.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from syncd.config import Config, resolve_secret
from syncd.errors import ConfigError, SyncdError
from syncd.state import read_json


class DaemonUnavailable(SyncdError):
    """A daemon runs (its pid is alive) but did not answer: callers fall back to the store and the model."""


class DaemonRejected(SyncdError, ValueError):
    """The daemon answered 400: the request itself is wrong (a bad option value); its reason is the message."""


@dataclass(frozen=True)
class Daemon:
    """The daemon serving this config's state folder."""

    url: str
    pid: int
    config: Config
    token: str | None
    token_problem: ConfigError | None
    timeout: float = 30.0

    @classmethod
    def find(cls, config: Config) -> Daemon | None:
        """The running daemon, or None when none runs (no ``daemon.json``, or the process it names is gone)."""
        info = read_json(config.state_dir / "daemon.json")
        if not isinstance(info, dict) or "url" not in info:
            return None
        try:
            pid = int(info["pid"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError):
            return None  # a daemon.json left by a daemon that was killed
        token, problem = None, None
        http = config.http
        if http.token_file or http.token_env:
            try:
                token = resolve_secret(http.token_env, key=cls._token_key(config), file=http.token_file,
                                       base_dir=config.base_dir)
            except ConfigError as exc:
                problem = exc  # a daemon on loopback asks for no token: only a refusal makes this an error
        return cls(url=str(info["url"]), pid=pid, config=config, token=token, token_problem=problem)

    @staticmethod
    def _token_key(config: Config) -> str:
        return "http.token_file" if config.http.token_file else "http.token_env"

    @property
    def base_url(self) -> str:
        """The address to connect to: a daemon bound to every address (0.0.0.0, ::) is reached on loopback."""
        return self.url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, params: Any = None) -> Any:
        """GET ``path`` and return the decoded JSON answer of a 200 (or of a 404, whose body says what was not
        found). Raises ConfigError when the daemon refuses the token (naming the token setting),
        DaemonRejected on a 400 and DaemonUnavailable when it does not answer properly."""
        import httpx

        try:
            response = httpx.get(self.base_url + path, params=params, headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise DaemonUnavailable(f"(pid {self.pid}) does not answer at {self.url}: "
                                    f"{exc or type(exc).__name__}") from exc
        if response.status_code in (401, 403):
            raise self._refusal(response.status_code)
        if response.status_code == 400:
            raise DaemonRejected(_error_of(response) or f"the daemon at {self.url} refused {path} (HTTP 400)")
        if response.status_code not in (200, 404):
            raise DaemonUnavailable(f"(pid {self.pid}) at {self.url} answered {path} with HTTP "
                                    f"{response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise DaemonUnavailable(f"(pid {self.pid}) at {self.url} answered {path} with something other than "
                                    "JSON") from None

    def _refusal(self, status: int) -> ConfigError:
        refused = f"the daemon at {self.url} runs but refused the request (HTTP {status}): "
        key = self._token_key(self.config)
        if self.token_problem is not None:
            return ConfigError(refused + f"it needs the bearer token, and {self.token_problem}",
                               key=self.token_problem.key)
        if self.token is None:
            return ConfigError(refused + "it needs a bearer token; set http.token_env (or http.token_file) to the "
                               "daemon's token", key="http.token_env")
        http = self.config.http
        source = f"the file {http.token_file}" if http.token_file else f"${http.token_env}"
        return ConfigError(refused + f"the token from {key} ({source}) is not the daemon's token", key=key)

    def search(self, text: str, options: Any) -> dict[str, Any]:
        """The daemon's `/search` answer (the `query --json` document) for ``options`` (SearchOptions)."""
        from syncd.search import options_to_params

        answer: dict[str, Any] = self.get("/search", [("q", text), *options_to_params(options)])
        return answer

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.get("/status")
        return answer

    def document(self, *, doc_id: str | None = None, uri: str | None = None, connector: str | None = None,
                 principals: Sequence[str] | None = None) -> dict[str, Any] | None:
        """The daemon's `/document` answer, or None when the index holds no such document that a caller holding
        ``principals`` may read."""
        params = [(name, value) for name, value in (("doc_id", doc_id), ("uri", uri), ("connector", connector))
                  if value is not None]
        params.extend(("principal", p) for p in principals or ())
        answer: dict[str, Any] = self.get("/document", params)
        return None if "error" in answer else answer


def _error_of(response: Any) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return str(data["error"]) if isinstance(data, dict) and "error" in data else None
