"""A Hub-like HTTP server on 127.0.0.1 serving model folders built by a test, for the download tests.

It answers the two requests bardterm makes, the way huggingface.co does:
- `GET /api/models/<repo>/revision/<rev>?blobs=True`: the commit and every file with its size and hash (LFS files,
  here *.safetensors and *.bin, carry an `lfs.sha256`; the rest a git blob sha1);
- `GET /<repo>/resolve/<rev>/<file>`: the file, honouring `Range: bytes=N-` with 206.
Faults a test can ask for: `cut[file] = n` (send n bytes, then drop the connection; later requests for it get 503
until `heal()`), `corrupt.add(file)` (serve bytes that do not match the listed hash), `missing.add(file)` (404).
Unknown repositories get 404 with `X-Error-Code: RepoNotFound`, as the Hub sends.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo -> {"sha": commit, "files": {name: bytes}}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut: dict[str, int] = {}
        self.broken: set[str] = set()  # cut files: 503 until healed
        self.break_after_cut = True  # False: a retry right after the cut succeeds
        self.bytes_per_s: float | None = None  # a slow link, to watch a progress bar
        self.corrupt: set[str] = set()
        self.missing: set[str] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_repo(self, repo: str, folder: Path | None = None, files: dict[str, bytes] | None = None) -> str:
        files = dict(files or {})
        if folder is not None:
            files.update({p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()})
        commit = hashlib.sha1(repo.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo] = {"sha": commit, "files": files}
        return commit

    def heal(self) -> None:
        self.cut.clear()
        self.broken.clear()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(("GET", path, self.headers.get("Range")))
                if path.startswith("/api/models/"):
                    repo, _, revision = path[len("/api/models/"):].partition("/revision/")
                    self._info(repo, revision)
                elif "/resolve/" in path:
                    repo, _, rest = path[1:].partition("/resolve/")
                    revision, _, name = rest.partition("/")
                    self._file(repo, revision, name)
                else:
                    self._send(404, b"not found")

            def _send(self, status: int, body: bytes, headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, repo: str, revision: str):
                found = hub.repos.get(repo)
                if found is None:
                    self._send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                    return None
                if revision not in ("main", found["sha"]):
                    self._send(404, b'{"error":"Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
                    return None
                return found

            def _info(self, repo: str, revision: str):
                found = self._repo(repo, revision)
                if found is None:
                    return
                siblings = []
                for name, data in found["files"].items():
                    entry = {"rfilename": name, "size": len(data), "blobId": git_blob_sha1(data)}
                    if name.endswith((".safetensors", ".bin")):
                        entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                        "pointerSize": 134}
                    siblings.append(entry)
                body = json.dumps({"id": repo, "sha": found["sha"], "siblings": siblings}).encode()
                self._send(200, body, {"Content-Type": "application/json"})

            def _file(self, repo: str, revision: str, name: str):
                found = self._repo(repo, revision)
                if found is None:
                    return
                if name not in found["files"] or name in hub.missing:
                    self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"})
                    return
                if name in hub.broken:
                    self._send(503, b"try later")
                    return
                data = found["files"][name]
                if name in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                ranged = self.headers.get("Range")
                if ranged and ranged.startswith("bytes="):
                    start = int(ranged[len("bytes="):].split("-")[0])
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if name in hub.cut:  # send part of it, then drop the connection, like a network cut
                    self.wfile.write(body[:hub.cut.pop(name)])
                    self.wfile.flush()
                    if hub.break_after_cut:
                        hub.broken.add(name)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if hub.bytes_per_s:
                    import time

                    for at in range(0, len(body), 65536):
                        self.wfile.write(body[at:at + 65536])
                        time.sleep(65536 / hub.bytes_per_s)
                    return
                self.wfile.write(body)

        return Handler
