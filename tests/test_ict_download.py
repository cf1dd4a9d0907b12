"""`facemodel.load("ict")`: download at a pinned commit, verified, atomic — against a local server."""

import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading

import pytest

from mofa import facemodel
from mofa.facemodel import ict, ict_manifest
from tests.conftest import SHARED_DATA

FILES = {"FaceXModel/generic_neutral_mesh.obj": b"v 0 0 0\n" * 50,
         "FaceXModel/vertex_indices.json": b'{"expressions": []}',
         "LICENSE": b"MIT\n"}
MANIFEST = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}


def _archive(files: dict, top: str = "ICT-FaceKit-0123abc") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in {**files, "README.md": b"not read"}.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Server:
    """Serves `routes` (path -> bytes or a file path) on 127.0.0.1; `truncate` sends
    only the first half of a body while announcing its full length."""

    def __init__(self):
        self.routes, self.requests, self.truncate = {}, [], False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                if isinstance(body, str):
                    with open(body, "rb") as f:
                        body = f.read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if server.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOFA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ict-facekit"


def _cache_entries(cache) -> list:
    return sorted(os.listdir(cache)) if cache.exists() else []


def test_fetch_downloads_verifies_and_caches(server, cache):
    server.routes["/ict.tar.gz"] = _archive(FILES)
    folder = ict.fetch(server.url("/ict.tar.gz"), manifest=MANIFEST, progress=False)
    for name, data in FILES.items():
        with open(os.path.join(folder, name), "rb") as f:
            assert f.read() == data
    assert not os.path.exists(os.path.join(folder, "README.md"))  # only the files read
    assert _cache_entries(cache) == [os.path.basename(folder)]
    # The second call is served by the cache: no request reaches the server.
    assert ict.fetch(server.url("/ict.tar.gz"), manifest=MANIFEST, progress=False) == folder
    assert server.requests == ["/ict.tar.gz"]


def test_fetch_url_comes_from_the_environment(server, cache, monkeypatch):
    server.routes["/mirror.tar.gz"] = _archive(FILES)
    monkeypatch.setenv(ict.URL_ENV, server.url("/mirror.tar.gz"))
    ict.fetch(manifest=MANIFEST, progress=False)
    assert server.requests == ["/mirror.tar.gz"]


def test_hash_mismatch_names_the_file_and_caches_nothing(server, cache):
    server.routes["/ict.tar.gz"] = _archive({**FILES, "LICENSE": b"changed\n"})
    with pytest.raises(ValueError, match=r"LICENSE .*SHA-256.*nothing was cached"):
        ict.fetch(server.url("/ict.tar.gz"), manifest=MANIFEST, progress=False)
    assert _cache_entries(cache) == []


def test_missing_file_in_archive_is_named(server, cache):
    server.routes["/ict.tar.gz"] = _archive({k: v for k, v in FILES.items() if k != "LICENSE"})
    with pytest.raises(ValueError, match="lacks 1 of the files mofa reads, e.g. LICENSE"):
        ict.fetch(server.url("/ict.tar.gz"), manifest=MANIFEST, progress=False)
    assert _cache_entries(cache) == []


def test_interrupted_download_leaves_no_partial_cache_and_retry_works(server, cache):
    server.routes["/ict.tar.gz"] = _archive(FILES)
    server.truncate = True
    url = server.url("/ict.tar.gz")
    with pytest.raises(OSError, match=r"could not download .*ict\.tar\.gz.*ict:PATH"):
        ict.fetch(url, manifest=MANIFEST, progress=False)
    assert _cache_entries(cache) == []
    server.truncate = False
    folder = ict.fetch(url, manifest=MANIFEST, progress=False)
    assert os.path.isfile(os.path.join(folder, "LICENSE"))


def test_killed_download_leftovers_are_removed_but_running_ones_kept(server, cache):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)  # that process has exited
    stale = cache / f".partial-{dead_pid}-abc"
    legacy = cache / ".partial-killed"
    running = cache / f".partial-{os.getppid()}-xyz"  # a live process's download
    for folder in (stale, legacy, running):
        folder.mkdir(parents=True)
        (folder / "archive").write_bytes(b"half")
    server.routes["/ict.tar.gz"] = _archive(FILES)
    folder = ict.fetch(server.url("/ict.tar.gz"), manifest=MANIFEST, progress=False)
    assert _cache_entries(cache) == sorted([os.path.basename(folder), running.name])


def test_offline_error_names_the_url_and_the_path_alternative(cache):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ict.tar.gz"
    with pytest.raises(OSError, match=rf"could not download {url}.*--face-model ict:PATH"):
        ict.fetch(url, manifest=MANIFEST, progress=False)
    assert _cache_entries(cache) == []


def test_not_an_archive_is_a_clear_error(server, cache):
    server.routes["/ict.tar.gz"] = b"<html>rate limited</html>"
    with pytest.raises(ValueError, match="not a readable archive"):
        ict.fetch(server.url("/ict.tar.gz"), manifest=MANIFEST, progress=False)
    assert _cache_entries(cache) == []


def test_pinned_manifest_matches_the_real_archive(server, cache, monkeypatch):
    """The real ICT-FaceKit archive (../shared/data) passes the pinned hashes of all the
    files mofa reads, and `facemodel.load("ict")` resolves to the fetched folder."""
    archive = SHARED_DATA / "ict-facekit.tar.xz"
    if not archive.exists():
        pytest.skip(f"ICT-FaceKit archive not found at {archive}")
    server.routes["/ict.tar.xz"] = str(archive)
    monkeypatch.setenv(ict.URL_ENV, server.url("/ict.tar.xz"))
    assert len(ict_manifest.SHA256) == 156  # neutral, 100 identities, 53 blendshapes, json, LICENSE
    folder = ict.fetch(progress=False)
    assert ict._model_dir(folder) == os.path.join(folder, "FaceXModel")
    loaded = {}
    monkeypatch.setattr(ict, "load", lambda path, **kw: loaded.setdefault("path", path))
    facemodel.load("ict")
    assert loaded["path"] == folder and server.requests == ["/ict.tar.xz"]
