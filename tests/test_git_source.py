"""Git source against real repositories made in a temporary folder (and a real HTTP server for tokens)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import git
import pytest

from mlp.sources.git import GitAuth, GitSource, GitSourceError

pytestmark = pytest.mark.timeout(60)


def _commit(repo: git.Repo, files: dict[str, str | bytes | None], message: str, author: str = "Ada") -> str:
    root = Path(repo.working_tree_dir or ".")
    for rel, content in files.items():
        path = root / rel
        if content is None:
            repo.index.remove([rel], working_tree=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        repo.index.add([rel])
    actor = git.Actor(author, f"{author.lower()}@example.com")
    return repo.index.commit(message, author=actor, committer=actor).hexsha


@pytest.fixture()
def upstream(tmp_path: Path) -> git.Repo:
    repo = git.Repo.init(tmp_path / "upstream", initial_branch="main")
    _commit(
        repo,
        {
            "specs/a.yaml": "kind: Model\n",
            "environments/dev.yaml": "kind: Environment\n",
            "templates/isvc.yaml.j2": "x",
            "README.md": "not a spec",
        },
        "first",
    )
    return repo


def test_fetch_and_snapshot_reads_commit_tree(upstream: git.Repo, tmp_path: Path) -> None:
    src = GitSource(str(upstream.working_tree_dir), tmp_path / "cache")
    res = src.refresh(["main"])
    assert res.error is None
    assert res.changed == ["main"]
    sha = upstream.head.commit.hexsha
    assert res.revisions == {"main": sha}
    snap = src.snapshot(sha)
    assert snap.revision == sha
    assert set(snap.files) == {"specs/a.yaml", "environments/dev.yaml", "templates/isvc.yaml.j2"}
    assert snap.author == "Ada <ada@example.com>"
    assert snap.message == "first"
    # Shallow: the cache holds exactly one commit.
    assert (tmp_path / "cache" / "shallow").exists()

    # Nothing moved: no fetch, nothing changed.
    again = src.refresh(["main"])
    assert again.changed == [] and again.error is None

    new = _commit(upstream, {"specs/b.yaml": "kind: Model\n", "specs/a.yaml": None}, "second", author="Bob")
    res = src.refresh(["main"])
    assert res.changed == ["main"] and res.revisions["main"] == new
    snap = src.snapshot("main")
    assert snap.revision == new and "specs/b.yaml" in snap.files and "specs/a.yaml" not in snap.files
    assert snap.author.startswith("Bob")
    src.close()


def test_tags_branches_oversized_and_symlinks(upstream: git.Repo, tmp_path: Path) -> None:
    big = b"x: " + b"a" * 2048 + b"\n"
    root = Path(upstream.working_tree_dir or ".")
    (root / "specs" / "link.yaml").symlink_to("/etc/passwd")
    upstream.index.add(["specs/link.yaml"])
    _commit(upstream, {"specs/big.yaml": big}, "big")
    upstream.create_tag("v1", message="release 1")  # annotated: must resolve to the commit
    upstream.git.checkout("-b", "release")
    rel = _commit(upstream, {"specs/rel.yaml": "kind: Team\n"}, "on release")
    src = GitSource(str(root), tmp_path / "cache", max_bytes=1024)
    res = src.refresh(["main", "v1", "release"])
    assert res.error is None, res.error
    assert res.revisions["release"] == rel
    assert res.revisions["v1"] == upstream.tags["v1"].commit.hexsha == res.revisions["main"]
    snap = src.snapshot("v1")
    assert snap.oversized == {"specs/big.yaml": len(big)}
    assert "specs/big.yaml" not in snap.files and "specs/link.yaml" not in snap.files
    assert "specs/big.yaml" in snap.spec_files()
    assert "specs/rel.yaml" in src.snapshot("release").files
    missing = src.refresh(["nope"])
    assert missing.error is not None and "no branch or tag named nope" in missing.error
    with pytest.raises(GitSourceError):
        src.snapshot("0" * 40)


def test_remote_down_keeps_last_revision(upstream: git.Repo, tmp_path: Path) -> None:
    src = GitSource(str(upstream.working_tree_dir), tmp_path / "cache")
    sha = src.refresh(["main"]).revisions["main"]
    moved = tmp_path / "moved"
    shutil.move(str(upstream.working_tree_dir), moved)
    res = src.refresh(["main"])
    assert res.error is not None and "failed" in res.error
    assert res.revisions == {"main": sha}
    assert src.last_error == res.error
    assert src.snapshot(sha).revision == sha
    # The cache survives a restart of the process: a new GitSource knows the last fetched commit.
    src.close()
    again = GitSource(str(tmp_path / "gone"), tmp_path / "cache")
    assert again.revision("main") == sha
    shutil.move(str(moved), str(upstream.working_tree_dir))


class _AuthHandler(SimpleHTTPRequestHandler):
    expected = ""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def http_repo(upstream: git.Repo, tmp_path: Path) -> Iterator[str]:
    bare = tmp_path / "served" / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(upstream.working_tree_dir), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True)

    class Handler(_AuthHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(tmp_path / "served"), **kw)  # type: ignore[arg-type]

    Handler.expected = "Basic " + base64.b64encode(b"x-access-token:s3cret").decode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/repo.git"
    server.shutdown()


def test_https_token_from_env_and_file(
    http_repo: str, upstream: git.Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the token the server refuses and the error is a clear line, not a prompt or a hang.
    src = GitSource(http_repo, tmp_path / "c1")
    res = src.refresh(["main"])
    assert res.error is not None and res.revisions == {}
    monkeypatch.setenv("MLP_TEST_GIT_TOKEN", "s3cret")
    src = GitSource(http_repo, tmp_path / "c2", auth=GitAuth(token_env="MLP_TEST_GIT_TOKEN"))
    res = src.refresh(["main"])  # dumb HTTP cannot fetch shallow: falls back to a full fetch
    assert res.error is None, res.error
    assert res.revisions["main"] == upstream.head.commit.hexsha
    assert "s3cret" not in (tmp_path / "c2" / "config").read_text()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    src = GitSource(http_repo, tmp_path / "c3", auth=GitAuth(token_file=token_file))
    assert src.refresh(["main"]).error is None


def test_ssh_key_environment(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    env = GitAuth(ssh_key_file=key).environment()
    assert env["GIT_SSH_COMMAND"].startswith("ssh -i ")
    assert str(key) in env["GIT_SSH_COMMAND"] and "IdentitiesOnly=yes" in env["GIT_SSH_COMMAND"]
    assert env["GIT_TERMINAL_PROMPT"] == "0"
