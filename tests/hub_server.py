"""A Hugging Face Hub for datasets, served on loopback: the HTTP API `huggingface_hub` and `datasets` use.

Point HF_ENDPOINT at `Hub.url`. Serves dataset info (GET /api/datasets/ID[/revision/REV]), the file tree
(GET /api/datasets/ID/tree/REV[/PATH]), paths-info (POST), and files (HEAD/GET /datasets/ID/resolve/REV/PATH,
with Range), with the Hub's headers: X-Repo-Commit, X-Linked-Etag / X-Linked-Size (the sha256 of a large file)
and X-Error-Code on errors (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo), as checked against
huggingface_hub's own reading of them (file_download.get_hf_file_metadata, utils/_http.hf_raise_for_status).

A bandwidth limit for benchmarks and streaming tests: `rate` bytes per second, shared by all downloads.

Faults for tests: `cut_after[path] = n` sends the first GET of that file's body only to byte n and then
drops the connection; `damage(...)` serves bytes that do not match the advertised sha256 (the stale-CDN case).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LARGE = {".parquet", ".arrow", ".gz", ".zst"}  # stored in LFS on the real Hub: etag = sha256


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False
    sha: str = ""
    damaged: dict[str, int] = field(default_factory=dict)  # path: GETs left that send it damaged

    def __post_init__(self):
        digest = hashlib.sha1(json.dumps(sorted((p, hashlib.sha256(b).hexdigest())
                                                for p, b in self.files.items())).encode())
        self.sha = digest.hexdigest()

    def entry(self, path: str) -> dict:
        data = self.files[path]
        e = {"type": "file", "path": path, "size": len(data),
             "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
        if any(path.endswith(s) for s in LARGE):
            e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return e

    def dirs(self) -> set[str]:
        out = set()
        for p in self.files:
            parts = p.split("/")[:-1]
            out.update("/".join(parts[:i + 1]) for i in range(len(parts)))
        return out


class Hub:
    def __init__(self, token: str = "hf_loopback_token"):
        self.repos: dict[str, Repo] = {}
        self.token = token
        self.cut_after: dict[str, int] = {}
        self.rate: float | None = None  # bytes per second over all file bodies at once; None: unlimited
        self._sent_until = 0.0  # when the bytes sent so far have used up the shared bandwidth
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.sent: dict[str, float] = {}  # file path: when its last body was sent whole (time.time())
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add(self, repo_id: str, files: dict[str, bytes], *, gated: bool = False) -> Repo:
        self.repos[repo_id] = Repo(dict(files), gated=gated)
        return self.repos[repo_id]

    def damage(self, repo_id: str, path: str, times: int = 1) -> None:
        """Serve `path` with one byte flipped in the middle, `times` times (same size, wrong sha256)."""
        self.repos[repo_id].damaged[path] = times

    def gets(self, repo_id: str, path: str) -> list[str | None]:
        """Range headers of the GET requests for one file, in order."""
        pattern = re.compile(rf"/datasets/{re.escape(repo_id)}/resolve/[^/]+/{re.escape(path)}")
        return [r for m, p, r in self.log if m == "GET" and pattern.fullmatch(p)]

    def _send(self, out, data: bytes, chunk: int = 64 * 1024) -> None:
        """Write `data`, at `rate` bytes per second over every download together (a shared link)."""
        for i in range(0, len(data), chunk):
            if self.rate:
                with self._lock:
                    self._sent_until = max(self._sent_until, time.monotonic()) + len(data[i:i + chunk]) / self.rate
                    until = self._sent_until
                time.sleep(max(0.0, until - time.monotonic()))
            out.write(data[i:i + chunk])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- HTTP --------------------------------------------------------------------------------------
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._route(body=False)

            def do_GET(self):
                self._route(body=True)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n).decode() if n else ""
                self._form = parse_qs(raw) if "=" in raw and not raw.startswith("{") else \
                    (json.loads(raw) if raw else {})
                self._route(body=True)

            def _error(self, status: int, code: str, message: str):
                payload = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _json(self, obj):
                payload = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _repo(self, repo_id: str, rev: str | None):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
                    return None
                if rev not in (None, "main", repo.sha):
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                    return None
                return repo

            def _allowed(self, repo_id: str, repo: Repo) -> bool:
                if not repo.gated:
                    return True
                auth = self.headers.get("Authorization") or ""
                if auth == f"Bearer {hub.token}":
                    return True
                status = 401 if not auth else 403
                self._error(status, "GatedRepo", f"Access to dataset {repo_id} is restricted. You must have access "
                                                 "to it and be authenticated to access it. Please log in.")
                return False

            def _route(self, body: bool):
                url = urlparse(self.path)
                path, query = unquote(url.path), parse_qs(url.query)
                with hub._lock:
                    hub.log.append((self.command, path, self.headers.get("Range")))
                m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
                if m:
                    return self._info(m[1], m[2])
                m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
                if m:
                    return self._tree(m[1], m[2], (m[3] or "").strip("/"), query)
                m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", path)
                if m:
                    return self._paths_info(m[1], m[2])
                m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self._file(m[1], m[2], m[3], body)
                self._error(404, "EntryNotFound", f"no route {path}")

            def _info(self, repo_id, rev):
                repo = self._repo(repo_id, rev)
                if repo:
                    self._json({"_id": repo.sha[:24], "id": repo_id, "sha": repo.sha, "private": False,
                                "gated": "auto" if repo.gated else False, "disabled": False, "downloads": 0,
                                "likes": 0, "tags": [], "cardData": {}, "lastModified": "2026-11-30T00:00:00.000Z",
                                "createdAt": "2026-11-30T00:00:00.000Z",
                                "siblings": [{"rfilename": p, **({"size": len(b)} if "blobs" in self.path else {})}
                                             for p, b in sorted(repo.files.items())]})

            def _tree(self, repo_id, rev, base, query):
                repo = self._repo(repo_id, rev)
                if not repo:
                    return
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                prefix = base + "/" if base else ""
                if base and base not in repo.dirs() and base not in repo.files:
                    return self._error(404, "EntryNotFound", f"{base} does not exist on {rev}")
                out = []
                for d in sorted(repo.dirs()):
                    if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                        out.append({"type": "directory", "path": d, "size": 0,
                                    "oid": hashlib.sha1(d.encode()).hexdigest()})
                for p in sorted(repo.files):
                    if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                        out.append(repo.entry(p))
                self._json(out)

            def _paths_info(self, repo_id, rev):
                repo = self._repo(repo_id, rev)
                if not repo:
                    return
                paths = self._form.get("paths", [])
                if isinstance(paths, str):
                    paths = [paths]
                out = [repo.entry(p) for p in paths if p in repo.files]
                out += [{"type": "directory", "path": p, "size": 0, "oid": hashlib.sha1(p.encode()).hexdigest()}
                        for p in paths if p in repo.dirs()]
                self._json(out)

            def _file(self, repo_id, rev, name, body):
                repo = self._repo(repo_id, rev)
                if not repo or not self._allowed(repo_id, repo):
                    return
                if name not in repo.files:
                    return self._error(404, "EntryNotFound", f"{name} does not exist on {rev}")
                entry = repo.entry(name)
                data = repo.files[name]
                with hub._lock:
                    if body and repo.damaged.get(name, 0) > 0:
                        repo.damaged[name] -= 1
                        data = bytearray(data)
                        data[len(data) // 2] ^= 0xFF
                        data = bytes(data)
                    cut = hub.cut_after.pop(name, None) if body else None
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                status = 200
                if m and body:
                    start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    data, status = data[start:end + 1], 206
                self.send_response(status)
                self.send_header("X-Repo-Commit", repo.sha)
                self.send_header("ETag", f'"{entry["oid"]}"')
                if "lfs" in entry:
                    self.send_header("X-Linked-Etag", f'"{entry["lfs"]["oid"]}"')
                    self.send_header("X-Linked-Size", str(entry["size"]))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{entry['size']}")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not body:
                    return
                if cut is not None:
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # mid-body: the client sees a dropped connection
                    return
                hub._send(self.wfile, data)
                hub.sent[name] = time.time()

        return Handler


if __name__ == "__main__":  # serve a folder of datasets, ROOT/OWNER/NAME/<files>, until interrupted
    import sys
    import time
    from pathlib import Path

    root = Path(sys.argv[1])
    hub = Hub()
    for repo_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        files = {str(f.relative_to(repo_dir)): f.read_bytes() for f in sorted(repo_dir.rglob("*")) if f.is_file()}
        sha = hub.add(f"{repo_dir.parent.name}/{repo_dir.name}", files).sha
        print(f"{repo_dir.parent.name}/{repo_dir.name}: {len(files)} files at {sha}", flush=True)
    print(f"HF_ENDPOINT={hub.url}", flush=True)
    while True:
        time.sleep(3600)
