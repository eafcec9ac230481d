"""A small Hugging Face Hub API server on 127.0.0.1, for round-trip tests where the real Hub is unreachable.

It implements the part of the Hub API that `huggingface_hub`, `transformers` and `kernels` use to push and pull
model and kernel repositories (see ``shared/specs/hub_conventions.md``, section D3):

* repositories of any type (``model``, ``kernel``, ``dataset``, ``space``) with branches, each commit an immutable
  snapshot ``{path: bytes}``;
* push: ``POST /api/repos/create``, ``/api/validate-yaml``, ``/api/<type>s/<repo>/preupload/<rev>`` (every file is
  "regular", so content arrives base64 inline in the commit and no LFS/Xet storage is needed; the known git-blob
  oid is returned so that unchanged files are skipped client side), ``/api/<type>s/<repo>/commit/<rev>`` (NDJSON),
  ``/api/<type>s/<repo>/branch/<name>`` (POST and DELETE), ``GET /api/whoami-v2``;
* pull: ``GET /api/<type>s/<repo>[/revision/<rev>]`` (info with ``sha`` and ``siblings``), ``tree/<rev>[/<path>]``,
  ``refs``, ``paths-info``, ``HEAD``/``GET /[<type>s/]<repo>/resolve/<rev>/<path>`` with ``X-Repo-Commit``, a quoted
  ``ETag`` and ``Content-Length``; ``GET /api/organizations/<org>/overview`` (``trustedKernelPublisher``);
* errors as the Hub sends them: 404 with ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`` (the
  clients turn these into typed errors; transformers probes ~15 optional files and needs EntryNotFound for them).

It only ever binds 127.0.0.1, picks a free port, and shuts itself down after ``lifetime`` seconds even if a test
forgets to stop it. Run ``python tests/hub_server.py`` to get one by hand (prints its URL).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space", "kernel")
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha(data: bytes) -> str:
    """The git object id of a file, which is also what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    type: str
    id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a full commit sha -> that commit (``None`` if unknown)."""
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)

    def commit(self, branch: str, message: str, files: dict[str, bytes]) -> Commit:
        parent = self.branches.get(branch)
        digest = hashlib.sha1(json.dumps([parent, message, len(self.commits), time.time(),
                                          sorted((p, git_blob_sha(c)) for p, c in files.items())]).encode())
        commit = Commit(digest.hexdigest(), parent, message, files)
        self.commits[commit.sha] = commit
        self.branches[branch] = commit.sha
        return commit


class HubError(Exception):
    """An HTTP error answer: status, ``X-Error-Code`` (or None) and message."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code = status, code


class HubState:
    """Every repository of the server, behind one lock (requests are served by several threads)."""

    def __init__(self, user: str = "zoo-tester", trusted_publishers: tuple[str, ...] = ()):
        self.user = user
        self.trusted_publishers = set(trusted_publishers)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.log: list[tuple[str, str, int]] = []

    def create(self, repo_type: str, repo_id: str, private: bool = False) -> tuple[Repo, bool]:
        with self.lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                return self.repos[key], False
            repo = self.repos[key] = Repo(repo_type, repo_id, private)
            repo.commit("main", "initial commit", {".gitattributes": _GITATTRIBUTES})  # as the Hub does
            return repo, True

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository {repo_type}/{repo_id} not found")
        return repo

    def snapshot(self, repo_type: str, repo_id: str, revision: str) -> tuple[Repo, Commit]:
        repo = self.repo(repo_type, repo_id)
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Every stored file of a revision, for assertions in tests."""
        with self.lock:
            return dict(self.snapshot(repo_type, repo_id, revision)[1].files)

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """A stored file's content, for assertions in tests (raises HubError if absent)."""
        with self.lock:
            _, commit = self.snapshot(repo_type, repo_id, revision)
            if path not in commit.files:
                raise HubError(404, "EntryNotFound", f"{path} does not exist at {revision}")
            return commit.files[path]


def _tree_entries(files: dict[str, bytes], path: str, recursive: bool) -> list[dict]:
    """Hub `tree` listing of the folder ``path`` ("" = root): files and sub-folders, sorted, folders first."""
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    folders: dict[str, list[str]] = {}
    entries = []
    for name in sorted(files):
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):].split("/")
        for depth in range(1, len(rest)):
            folder = prefix + "/".join(rest[:depth])
            folders.setdefault(folder, []).append(name)
            if not recursive:
                break
        if recursive or len(rest) == 1:
            data = files[name]
            entries.append({"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": name})
    if prefix and not entries and not folders:
        raise HubError(404, "EntryNotFound", f"{path} does not exist")
    listed = [{"type": "directory", "size": 0, "path": folder,
               "oid": hashlib.sha1("".join(sorted(members)).encode()).hexdigest()}
              for folder, members in sorted(folders.items())]
    return listed + entries


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect; every answer carries Content-Length
    timeout = 30  # idle keep-alive connections end instead of holding a thread forever
    server: _HubHTTPServer

    # -- plumbing -------------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        pass  # requests are recorded in state.log instead of printed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # errors raised by http.server itself (malformed requests) are recorded like every other answer
        self.server.state.log.append((self.command, self.path, code, message))
        super().send_error(code, message, explain)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.server.state.log.append((self.command, self.path, status))

    def _json(self, payload, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode())

    def _dispatch(self) -> None:
        try:
            url = urlsplit(self.path)
            segments = [unquote(s) for s in url.path.strip("/").split("/")]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            # read every body, even where it is not used: on a keep-alive connection it would else be taken for
            # the next request line
            self.body = self._body()
            with self.server.state.lock:
                if segments[0] == "api":
                    self._api(segments[1:], query)
                else:
                    self._resolve(segments)
        except HubError as error:
            headers = {"X-Error-Code": error.code} if error.code else {}
            self._send(error.status, json.dumps({"error": str(error)}).encode(), headers=headers,
                       head=self.command == "HEAD")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    @property
    def base_url(self) -> str:
        return self.server.url

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.base_url}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"

    # -- file downloads -------------------------------------------------------------------------------------------
    def _resolve(self, segments: list[str]) -> None:
        """``/[<type>s/]<org>/<name>/resolve/<revision>/<path>``: file content and the headers downloads need."""
        repo_type = "model"
        if segments and segments[0].endswith("s") and segments[0][:-1] in REPO_TYPES and segments[3:4] == ["resolve"]:
            repo_type, segments = segments[0][:-1], segments[1:]
        if len(segments) < 5 or segments[2] != "resolve" or self.command not in ("GET", "HEAD"):
            raise HubError(404, None, f"Not found: {self.path}")
        repo_id, revision, path = "/".join(segments[:2]), segments[3], "/".join(segments[4:])
        _, commit = self.server.state.snapshot(repo_type, repo_id, revision)
        if path not in commit.files:
            raise HubError(404, "EntryNotFound", f"Entry {path} not found at {revision}")
        data = commit.files[path]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_sha(data)}"', "Accept-Ranges": "none"}
        self._send(200, data, "application/octet-stream", headers, head=self.command == "HEAD")

    # -- API --------------------------------------------------------------------------------------------------------
    def _api(self, parts: list[str], query: dict[str, str]) -> None:
        state, method = self.server.state, self.command
        # like the Hub, writes need a token (any token: this server has one user); validate-yaml is anonymous
        if method in ("POST", "PUT", "DELETE") and parts != ["validate-yaml"] and parts[-2:-1] != ["paths-info"] \
                and not self.headers.get("Authorization", "").startswith("Bearer "):
            raise HubError(401, None, "Invalid credentials in Authorization header")
        if parts == ["whoami-v2"]:
            return self._json({"type": "user", "name": state.user, "fullname": state.user, "orgs": [],
                               "auth": {"accessToken": {"displayName": "dummy", "role": "write"}}})
        if parts == ["validate-yaml"] and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if parts[:1] == ["organizations"] and parts[2:] == ["overview"]:
            return self._json({"name": parts[1], "fullname": parts[1], "type": "org",
                               "trustedKernelPublisher": parts[1] in state.trusted_publishers})
        if parts[:1] == ["repos"] and method in ("POST", "DELETE"):
            return self._repos(parts[1:])
        if len(parts) < 3 or not parts[0].endswith("s") or parts[0][:-1] not in REPO_TYPES:
            raise HubError(404, None, f"Unknown endpoint {self.path}")
        repo_type, repo_id, rest = parts[0][:-1], f"{parts[1]}/{parts[2]}", parts[3:]
        action = rest[0] if rest else "revision"
        revision = "/".join(rest[1:2]) or "main"
        if action == "revision" and method == "GET":
            return self._info(repo_type, repo_id, revision)
        if action == "refs" and method == "GET":
            repo = state.repo(repo_type, repo_id)
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": sha} for n, sha in sorted(repo.branches.items())]
            return self._json({"branches": branches, "tags": [], "converts": [], "pullRequests": []})
        if action == "tree" and method == "GET":
            _, commit = state.snapshot(repo_type, repo_id, revision)
            recursive = query.get("recursive", "").lower() in ("1", "true")
            return self._json(_tree_entries(commit.files, "/".join(rest[2:]), recursive))
        if action == "paths-info" and method == "POST":
            _, commit = state.snapshot(repo_type, repo_id, revision)
            paths = parse_qs(self.body.decode()).get("paths", [])
            entries = [e for e in _tree_entries(commit.files, "", True) if e["path"] in paths]
            return self._json(entries)
        if action == "preupload" and method == "POST":
            return self._preupload(repo_type, repo_id, revision, query)
        if action == "commit" and method == "POST":
            return self._commit(repo_type, repo_id, revision, query)
        if action == "branch" and method in ("POST", "DELETE"):
            return self._branch(repo_type, repo_id, revision)
        raise HubError(404, None, f"Unknown endpoint {method} {self.path}")

    def _repos(self, parts: list[str]) -> None:
        payload = json.loads(self.body or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, None, f"Invalid repo type {repo_type!r}")
        name, organization = payload.get("name"), payload.get("organization") or self.server.state.user
        repo_id = name if "/" in (name or "") else f"{organization}/{name}"
        if parts == ["create"] and self.command == "POST":
            private = payload.get("private") or payload.get("visibility") == "private"
            _, created = self.server.state.create(repo_type, repo_id, bool(private))
            url = self._repo_url(repo_type, repo_id)
            if not created:
                return self._json({"error": "You already created this repo", "url": url}, 409)
            return self._json({"url": url, "name": repo_id, "id": repo_id})
        if parts == ["delete"]:
            self.server.state.repo(repo_type, repo_id)
            del self.server.state.repos[(repo_type, repo_id)]
            return self._json({})
        raise HubError(404, None, f"Unknown endpoint {self.path}")

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo, commit = self.server.state.snapshot(repo_type, repo_id, revision)
        self._json({
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": commit.sha, "private": repo.private, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        })

    def _preupload(self, repo_type: str, repo_id: str, revision: str, query: dict[str, str]) -> None:
        repo = self.server.state.repo(repo_type, repo_id)
        head = repo.resolve(revision)
        existing = head.files if head is not None else {}
        files = json.loads(self.body).get("files", [])
        self._json({"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha(existing[f["path"]]) if f["path"] in existing else None}
            for f in files
        ], "commitOid": head.sha if head else None})

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict[str, str]) -> None:
        if query.get("create_pr"):
            raise HubError(400, None, "This test Hub does not implement pull requests")
        repo = self.server.state.repo(repo_type, repo_id)
        if revision not in repo.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision} (commits go to a branch)")
        files = dict(repo.commits[repo.branches[revision]].files)
        header: dict = {}
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                parent = value.get("parentCommit")
                if parent and parent != repo.branches[revision]:
                    raise HubError(412, None, f"parentCommit {parent} is not the head of {revision}")
            elif key == "file":
                content = value["content"]
                files[value["path"]] = (base64.b64decode(content) if value.get("encoding") == "base64"
                                        else content.encode())
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:  # lfsFile and anything newer: never requested, since preupload answers "regular" only
                raise HubError(400, None, f"Unsupported commit operation {key!r}")
        commit = repo.commit(revision, header.get("summary") or "commit", files)
        self._json({"success": True, "commitOid": commit.sha, "commitMessage": commit.message,
                    "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{commit.sha}", "pullRequestUrl": None})

    def _branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        repo = self.server.state.repo(repo_type, repo_id)
        if self.command == "DELETE":
            if branch == "main" or repo.branches.pop(branch, None) is None:
                raise HubError(400 if branch == "main" else 404, None, f"Cannot delete branch {branch}")
            return self._json({})
        if branch in repo.branches:
            return self._json({"error": f"Reference refs/heads/{branch} already exists"}, 409)
        start = (json.loads(self.body) if self.body else {}).get("startingPoint") or "main"
        commit = repo.resolve(start)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {start}")
        repo.branches[branch] = commit.sha
        self._json({})


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client connection never keeps the test process alive
    state: HubState
    url: str


class HubServer:
    """A loopback Hub: ``with HubServer() as hub: ...`` (``hub.url`` for ``HF_ENDPOINT``, ``hub.state`` to inspect).

    Args:
        lifetime: seconds after which the server stops by itself, whatever the caller does.
        trusted_publishers: organisations whose overview says ``trustedKernelPublisher`` (``kernels`` then loads
            their kernels without ``trust_remote_code``).
    """

    def __init__(self, lifetime: float = 600.0, trusted_publishers: tuple[str, ...] = ()):
        self.lifetime = lifetime
        self.state = HubState(trusted_publishers=trusted_publishers)
        self._server: _HubHTTPServer | None = None
        self._timer: threading.Timer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("The hub server is not running.")
        return self._server.url

    def start(self) -> HubServer:
        server = _HubHTTPServer(("127.0.0.1", 0), _Handler)  # port 0: the OS picks a free port
        server.state = self.state
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                         name="hub-server").start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port (idempotent; also called by the lifetime timer)."""
        server, self._server = self._server, None
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve a loopback Hub until interrupted or --lifetime ends.")
    parser.add_argument("--lifetime", type=float, default=3600.0)
    parser.add_argument("--trusted", nargs="*", default=(), help="organisations trusted as kernel publishers")
    args = parser.parse_args()
    with HubServer(args.lifetime, tuple(args.trusted)) as hub:
        print(f"HF_ENDPOINT={hub.url}  (stops after {args.lifetime:.0f} s)", flush=True)
        try:
            while hub._server is not None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
