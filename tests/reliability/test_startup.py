"""Start-up on a broken store, ``loka store check``, and a disk that fills up under a job.

A read-only store, a full disk, a corrupted SQLite file, a corrupted or missing adapter: each is
refused with one clear line (``/ready`` answers 503 ``load_failed`` with it, ``python -m service``
exits 1 with it), and nothing in the store is changed by the attempt. Real mechanisms are used:
a read-only bind mount and a tiny tmpfs when the tests run as root (as in the dev container),
``chmod`` otherwise; the tests that need a mount are skipped where mounting is not allowed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from harness import REPO_ROOT, LokaServer, accepted, free_port, wait_job

from memory_store import Loka
from memory_store.codebook.check import check_store
from memory_store.errors import StoreError
from memory_store.models.builtin import counterfactual_answer, find_fact
from memory_store.types import GenerationRequest, PieceKind, PieceSpec, UpdateOptions
from service.config import Settings
from service.main import create_app

pytestmark = pytest.mark.slow

IS_ROOT = os.geteuid() == 0


# ---------------------------------------------------------------------------- mounts
@pytest.fixture
def mounts() -> Iterator[Callable[..., bool]]:
    """``mount(*args)``: run ``mount`` (True if it worked); everything is unmounted after."""
    done: list[Path] = []

    def mount(*args: str) -> bool:
        if not IS_ROOT:
            return False
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        if result.returncode == 0:
            done.append(Path(args[-1]))
        return result.returncode == 0

    yield mount
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def read_only(path: Path, mount: Callable[..., bool]) -> str:
    """Make ``path`` read-only: a read-only bind mount as root, chmod otherwise."""
    if IS_ROOT:
        if not (mount("--bind", str(path), str(path))
                and mount("-o", "remount,ro,bind", str(path))):
            pytest.skip("a read-only bind mount is not allowed here")
        return "read-only file system"
    for p in (path, *path.rglob("*")):
        p.chmod(p.stat().st_mode & 0o555)
    return "not writable"


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left to flush at close
        for block in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * block)
    return filler


def tmpfs(path: Path, size: str, mount: Callable[..., bool]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if not mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        pytest.skip("mounting a tmpfs is not allowed here (needs root)")
    return path


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (what a failed start must not change), but SQLite's
    empty ``-wal`` / ``-shm`` companions, which an open may leave."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


# ---------------------------------------------------------------------------- a store
@pytest.fixture(scope="module")
def built(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one published version: one memory holding an edit and an unlearn piece."""
    store = tmp_path_factory.mktemp("built") / "store"
    loka = Loka.open(store, default_model)
    fe, fu = find_fact("Veltoria", "capital"), find_fact("Quellan", "sport")
    loka.update([PieceSpec(PieceKind.EDIT, fe.prompt, " " + counterfactual_answer(fe)),
                 PieceSpec(PieceKind.UNLEARN, fu.prompt, " " + fu.answer)],
                options=UpdateOptions(steps=20))
    loka.close()
    return store


@pytest.fixture
def store(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the built store, to break."""
    copy = tmp_path / "store"
    shutil.copytree(built, copy)
    return copy


def adapter_file(store: Path) -> Path:
    return next(store.glob("adapters/*/*/adapter_model.safetensors"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def corrupt_sqlite_page(store: Path) -> None:
    """Overwrite the middle of the ``pieces`` table's root page (SQLite's own checks see it)."""
    import sqlite3

    db = sqlite3.connect(store / "loka.sqlite")
    page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'pieces'").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(store / "loka.sqlite", "r+b") as fh:
        fh.seek((page - 1) * size + 40)
        fh.write(os.urandom(size - 80))


# ---------------------------------------------------------------------------- opening
def test_read_only_store_is_refused_clearly(store: Path, default_model: Path,
                                            mounts: Callable[..., bool]) -> None:
    reason = read_only(store, mounts)
    before = digest(store)
    with pytest.raises(StoreError, match=reason) as err:
        Loka.open(store, default_model)
    assert str(store) in err.value.message
    assert digest(store) == before


def test_full_disk_is_refused_clearly(built: Path, tmp_path: Path, default_model: Path,
                                      mounts: Callable[..., bool]) -> None:
    disk = tmpfs(tmp_path / "disk", "1m", mounts)
    store = disk / "store"
    shutil.copytree(built, store)
    fill(disk)
    before = digest(store)
    with pytest.raises(StoreError, match="no space left on the device"):
        Loka.open(store, default_model)
    assert digest(store) == before


@pytest.mark.parametrize("damage", ["header", "page"])
def test_corrupted_sqlite_is_refused_clearly(store: Path, default_model: Path,
                                            damage: str) -> None:
    if damage == "header":
        with open(store / "loka.sqlite", "r+b") as fh:
            fh.write(b"this is not SQLite")
        expected = "file is not a database"
    else:
        corrupt_sqlite_page(store)
        expected = "corrupted|malformed"  # found by quick_check, or by SQLite on reading
    before = digest(store)
    with pytest.raises(StoreError, match=expected) as err:
        Loka.open(store, default_model)
    assert "loka.sqlite" in err.value.message and "loka store check" in err.value.message
    assert digest(store) == before


def test_missing_adapter_folder_is_refused(store: Path, default_model: Path) -> None:
    shutil.rmtree(adapter_file(store).parent)
    with pytest.raises(StoreError, match="missing adapter folders"):
        Loka.open(store, default_model)


def test_a_corrupted_adapter_is_never_served(store: Path, default_model: Path) -> None:
    """A flipped bit in the weights still loads as a valid file: the content hash tells."""
    flip_byte(adapter_file(store), -16)
    loka = Loka.open(store, default_model)
    memory = loka.memories()[0].id
    with pytest.raises(StoreError, match="does not match its content hash"):
        loka.generate([GenerationRequest("The capital of Veltoria is", 4, memory=memory)])
    loka.close()


def run_service(store: Path, default_model: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=180, env={**os.environ, "LOKA_STORE_DIR": str(store),
                          "LOKA_MODEL": str(default_model), "LOKA_PORT": str(free_port())},
    )


def test_the_service_exits_1_with_a_one_line_reason(
    built: Path, tmp_path: Path, default_model: Path, mounts: Callable[..., bool]
) -> None:
    stores: dict[str, tuple[Path, str]] = {}
    for name in ("corrupted", "read_only", "full"):
        stores[name] = (tmp_path / name / "store", "")
    shutil.copytree(built, stores["corrupted"][0])
    with open(stores["corrupted"][0] / "loka.sqlite", "r+b") as fh:
        fh.write(b"garbage garbage!")
    stores["corrupted"] = (stores["corrupted"][0], "file is not a database")
    shutil.copytree(built, stores["read_only"][0])
    stores["read_only"] = (stores["read_only"][0], read_only(stores["read_only"][0], mounts))
    disk = tmp_path / "full"
    disk.mkdir()
    if mounts("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)):
        shutil.copytree(built, disk / "store")
        fill(disk)
        stores["full"] = (disk / "store", "no space left on the device")
    else:  # not root: no tiny file system to fill (test_full_disk_is_refused_clearly skips)
        del stores["full"]
    with ThreadPoolExecutor(len(stores)) as pool:  # a few seconds of imports each
        runs = dict(zip(stores, pool.map(lambda s: run_service(s[0], default_model),
                                         stores.values()), strict=True))
    for name, done in runs.items():
        assert done.returncode == 1, (name, done.stderr[-2000:])
        last = done.stderr.strip().splitlines()[-1]
        assert "stopped: the engine failed to load: store_error: " in last, (name, last)
        assert stores[name][1] in last, (name, last)
        assert "Traceback" not in done.stderr, (name, done.stderr[-2000:])


def test_ready_is_503_load_failed_naming_the_problem(store: Path, default_model: Path) -> None:
    with open(store / "loka.sqlite", "r+b") as fh:
        fh.write(b"garbage garbage!")
    port = free_port()
    app = create_app(Settings(model=str(default_model), store_dir=store, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while app.state.service.load_error is None or not server.started:
            assert time.monotonic() < deadline, "the load never failed"
            time.sleep(0.05)
        r = httpx.get(f"http://127.0.0.1:{port}/ready")
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["type"] == "load_failed"
        assert "file is not a database" in error["message"] and str(store) in error["message"]
    finally:
        server.should_exit = True
        thread.join(30)


# ---------------------------------------------------------------------------- store check
def loka_check(store: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "store", "check", "--store",
                           str(store), *flags], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def test_store_check_passes_a_clean_store_and_names_a_flipped_byte(store: Path) -> None:
    # (the command on a clean store: test_crash.py runs it after the crashes)
    clean = check_store(store, all_versions=True)
    assert clean.ok and clean.adapters_checked == 1, clean.problems
    weights = adapter_file(store)
    flip_byte(weights, -16)
    broken = loka_check(store)
    assert broken.returncode == 1
    assert str(weights.relative_to(store)) in broken.stdout
    assert "does not match the memory's content hash" in broken.stdout


def version_file(store: Path, column: str) -> str:
    """The index or gate file version 1 names (content-addressed: versions/<kind>-<sha>)."""
    with sqlite3.connect(f"file:{store / 'loka.sqlite'}?mode=ro", uri=True) as conn:
        return conn.execute(f"SELECT {column} FROM versions WHERE version = 1").fetchone()[0]


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


BREAKS = {
    "truncated index": (lambda s: truncate(s / version_file(s, "index_file"), 100),
                        lambda s: version_file(s, "index_file")),
    "missing index": (lambda s: (s / version_file(s, "index_file")).unlink(),
                      lambda s: f"missing file {version_file(s, 'index_file')}"),
    "truncated gate": (lambda s: (s / version_file(s, "gate_file")).write_bytes(b"\0" * 10),
                       lambda s: version_file(s, "gate_file")),
    "deleted adapter folder": (lambda s: shutil.rmtree(adapter_file(s).parent),
                               "missing adapter folder adapters/mem_000001/"),
    "unreadable adapter": (lambda s: adapter_file(s).write_bytes(b"junk"),
                           "adapter adapters/mem_000001/"),
    "corrupted sqlite page": (corrupt_sqlite_page, "loka.sqlite"),
    "not a store": (lambda s: (s / "loka.sqlite").unlink(), "not a LOKA store"),
}


@pytest.mark.parametrize("damage", list(BREAKS))
def test_store_check_names_what_is_broken(store: Path, damage: str) -> None:
    breaks, named = BREAKS[damage]
    if callable(named):
        named = named(store)
    breaks(store)
    report = check_store(store, all_versions=True)
    assert not report.ok
    assert any(named in problem for problem in report.problems), report.problems


def test_store_check_works_on_a_read_only_copy(store: Path,
                                               mounts: Callable[..., bool]) -> None:
    read_only(store, mounts)
    report = check_store(store, all_versions=True)
    assert report.ok, report.problems
    assert report.versions_checked == [1]


# ---------------------------------------------------------------------------- full disk, live
def submit_on_full_disk(server: LokaServer, client: httpx.Client, body: dict) -> str | None:
    """Submit while the disk is full: the id of the accepted job, or None if it was refused
    with a clear 500 (nothing queued). An accepted job must fail naming the disk."""
    offset = len(server.log())
    r = client.post("/v1/updates", json=body)
    if r.status_code != 202:
        assert r.status_code == 500, r.text
        assert r.json()["error"]["type"] == "store_error"
        assert "nothing was queued" in r.json()["error"]["message"]
        return None
    job_id = r.json()["id"]
    server.wait_log(rf"job {job_id}: cannot write the store", timeout=60, since=offset)
    return job_id


def test_a_disk_that_fills_up_under_a_job(tmp_path: Path, make_server: Callable[..., LokaServer],
                                          mounts: Callable[..., bool]) -> None:
    """A job on a full disk fails (or is refused) with a clear reason, nothing is published or
    lost, serving goes on, and once there is room again the next job succeeds."""
    disk = tmpfs(tmp_path / "disk", "8m", mounts)
    server = make_server(store_dir=disk / "store")
    server.start()
    fe = find_fact("Orlenia", "currency")
    edit = {"edits": [{"prompt": fe.prompt, "target": " " + counterfactual_answer(fe)}],
            "options": {"steps": 20}}
    with server.client() as client:
        first = wait_job(client, accepted(client.post("/v1/updates", json=edit)))
        assert first["status"] == "succeeded", first
        filler = fill(disk)
        refused_or_failed = submit_on_full_disk(server, client, edit)
        # room for the job's row, not for its adapter: accepted, then fails
        with open(filler, "r+b") as fh:
            fh.truncate(max(0, filler.stat().st_size - 32 * 1024))
        failing = submit_on_full_disk(server, client, edit)
        assert failing is not None, "with 32 KiB free the job should have been accepted"
        generated = client.post("/v1/generate", json={"prompt": fe.prompt, "max_new_tokens": 4})
        assert generated.status_code == 200, generated.text  # serving goes on
        assert generated.json()["codebook_version"] == 1
        filler.unlink()  # room again: the failures can be recorded
        for job_id in (refused_or_failed, failing):
            if job_id is not None:
                failed = wait_job(client, job_id)
                assert failed["status"] == "failed", failed
                assert failed["error"].startswith("store_error: cannot write the store"), failed
                assert "No space left on device" in failed["error"] or "full" in failed["error"]
        assert client.get("/v1/codebook").json()["version"] == 1
        second = wait_job(client, accepted(client.post("/v1/updates", json=edit)))
        assert second["status"] == "succeeded", second
        assert second["result"]["codebook_version"] == 2
    server.stop()
    report = check_store(disk / "store", all_versions=True)
    assert report.ok, report.problems
