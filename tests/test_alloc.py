"""The allocator cap the CLI sets at start (syncd/alloc.py), observed in glibc's own report of its arenas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd import alloc

PROBE = r"""
import ctypes, sys, threading
libc = ctypes.CDLL("libc.so.6")
if sys.argv[1] == "capped":
    from syncd.alloc import limit_malloc_arenas
    assert limit_malloc_arenas()
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(8)

def work():
    start.wait()
    for _ in range(2000):
        libc.free(libc.malloc(512))

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
fp = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(open(sys.argv[2]).read().count("<heap nr="))
"""


def _arenas(mode: str, tmp_path: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(tmp_path / f"{mode}.xml")], env=env,
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return int(out.stdout.strip())


def test_the_arena_cap_holds_threads_that_allocate_to_two_arenas(tmp_path: Path) -> None:
    assert _arenas("default", tmp_path) > alloc.ARENAS  # eight threads: an arena each, uncapped
    assert _arenas("capped", tmp_path) <= alloc.ARENAS


def test_an_arena_setting_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert alloc.limit_malloc_arenas() is False


@pytest.mark.parametrize(("command", "capped"), [("reindex", True), ("sync", True), ("status", True),
                                                  ("run", False)])
def test_batch_commands_set_the_cap_first_and_the_service_keeps_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, capped: bool) -> None:
    from syncd import cli

    calls: list[str] = []
    monkeypatch.setattr(alloc, "limit_malloc_arenas", lambda: calls.append("cap") or True)
    code = cli.main(["--config", str(tmp_path / "missing.toml"), command])
    assert calls == (["cap"] if capped else []) and code == cli.EXIT_USAGE  # before the config is even read
