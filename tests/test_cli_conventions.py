"""Conventions every `mlp` command keeps (kubectl / argocd / flux habits), walked over whatever is registered.

New commands from any module are covered as soon as they are in `mlp.cli.main.COMMANDS`:
- `--help` exits 0 and shows an example;
- `-o/--output` is always an output format from one vocabulary, never a file;
- a bad option or a bad `-o` value exits 2 with one line and no traceback;
- no ANSI colour in help, and none with NO_COLOR set even on a terminal; colour on a terminal otherwise;
- long-running commands take --log-format/--log-level; commands that reach a cluster take
  --context, --kubeconfig and --kube-api-qps/--kube-api-burst.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT

from mlp.cli._common import FORMATS, kube_api_limits, kube_api_limits_chosen, kube_api_options, use_color
from mlp.cli.main import COMMANDS, cli

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MLP = [sys.executable, "-m", "mlp.cli.main"]
LONG_RUNNING = {"controller", "webhooks", "up", "server"}


def _walk(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        out.append(((*prefix, name), cmd))
        if isinstance(cmd, click.Group):
            out.extend(_walk(cmd, (*prefix, name)))
    return out


ALL = _walk(cli)
IDS = [" ".join(path) for path, _ in ALL]


def test_every_registered_command_is_walked() -> None:
    assert {path[0] for path, _ in ALL} == set(COMMANDS)
    assert len(ALL) > len(COMMANDS)  # subcommands (models push, schemas export, ...) too


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_help_exits_0_with_an_example_and_no_colour(path: tuple[str, ...], cmd: click.Command) -> None:
    res = CliRunner().invoke(cli, [*path, "--help"], color=False)
    assert res.exit_code == 0, res.output
    assert "Example" in res.output, f"mlp {' '.join(path)} --help has no example"
    assert not ANSI.search(res.output)


def _output_options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option) and ({"-o", "--output"} & set(p.opts))]


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_dash_o_is_a_format(path: tuple[str, ...], cmd: click.Command) -> None:
    for opt in _output_options(cmd):
        assert {"-o", "--output"} <= set(opt.opts), (path, opt.opts)
        assert isinstance(opt.type, click.Choice), f"mlp {' '.join(path)}: {opt.opts} is not a format"
        assert set(opt.type.choices) <= set(FORMATS), (path, opt.type.choices)
    # a command with a format option spells it -o/--output (with --format as an alias)
    for p in cmd.params:
        if isinstance(p, click.Option) and "--format" in p.opts:
            assert "-o" in p.opts, f"mlp {' '.join(path)}: --format without -o"


@pytest.mark.parametrize(("path", "cmd"), [(p, c) for p, c in ALL if _output_options(c)], ids=lambda v: str(v))
def test_a_bad_format_is_a_usage_error(path: tuple[str, ...], cmd: click.Command) -> None:
    res = subprocess.run([*MLP, *path, "-o", "no-such-format"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert res.returncode == 2, (path, res.stderr)
    assert "no-such-format" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_unknown_option_exits_2(path: tuple[str, ...], cmd: click.Command) -> None:
    res = CliRunner().invoke(cli, [*path, "--no-such-option"])
    assert res.exit_code == 2, (path, res.output)


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_long_running_and_cluster_options(path: tuple[str, ...], cmd: click.Command) -> None:
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    if path[0] in LONG_RUNNING and not isinstance(cmd, click.Group):
        assert {"--log-format", "--log-level"} <= opts, path
    if "--kubeconfig" in opts:
        assert {"--context", "--kube-api-qps", "--kube-api-burst"} <= opts, path
        kubeconfig = next(p for p in cmd.params if "--kubeconfig" in getattr(p, "opts", []))
        assert kubeconfig.envvar == ["MLP_KUBECONFIG", "KUBECONFIG"], path
    if "--state-dir" in opts and path[0] in ("controller", "status", "audit", "sync", "webhooks"):
        state = next(p for p in cmd.params if "--state-dir" in getattr(p, "opts", []))
        assert state.envvar == "MLP_STATE_DIR", path


@pytest.mark.parametrize(
    ("args", "chosen"),
    [([], False), (["--kube-api-qps", "50"], True), (["--kube-api-burst", "7"], True)],
)
def test_rate_limits_named_on_the_command_line_are_kept(args: list[str], chosen: bool) -> None:
    # only mlp's own defaults may be lifted on a server with API Priority and Fairness
    @click.command()
    @kube_api_options
    def probe() -> None:
        click.echo(f"{kube_api_limits_chosen()} {kube_api_limits()}")

    result = CliRunner().invoke(probe, args)
    assert result.exit_code == 0, result.output
    assert result.output.split(" ", 1)[0] == str(chosen)


def test_use_color_honours_no_color_and_terminals(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(None, Tty()) is True

    class Pipe:
        def isatty(self) -> bool:
            return False

    assert use_color(None, Pipe()) is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_color(None, Tty()) is False
    assert use_color(True, Tty()) is True  # an explicit --color still wins


def _run_on_tty(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run a command with stdout on a pseudo-terminal, as in an interactive shell."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdout=follower, stderr=subprocess.PIPE, env=env, cwd=cwd)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


@pytest.mark.timeout(300)
def test_no_color_removes_colour_from_diff_on_a_terminal(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for folder in ("specs", "environments", "templates"):
        if (REPO_ROOT / folder).exists():
            shutil.copytree(REPO_ROOT / folder, repo / folder)
    args = [*MLP, "diff", "--env", "dev", "--repo", str(repo), "--state-dir", str(tmp_path / "state")]
    base = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm"}
    code, coloured = _run_on_tty(args, base, tmp_path)
    assert code == 1, coloured  # nothing applied yet: changes
    assert ANSI.search(coloured)
    code, plain = _run_on_tty(args, base | {"NO_COLOR": "1"}, tmp_path)
    assert code == 1
    assert not ANSI.search(plain), plain
    assert "ModelDeployment" in plain or "InferenceService" in plain, plain  # the same diff, without colour


def test_exit_codes_of_validate_and_diff(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["validate", str(REPO_ROOT), "-o", "json"]).exit_code == 0
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "x.yaml").write_text("kind: Model\n")
    res = runner.invoke(cli, ["validate", str(tmp_path), "-o", "json"])
    assert res.exit_code == 1 and '"valid": false' in res.output
    assert not (tmp_path / "json").exists()  # -o is the format, never a file name
    assert "1 error" in runner.invoke(cli, ["validate", str(tmp_path)]).output
    assert runner.invoke(cli, ["validate", str(tmp_path / "missing")]).exit_code == 2


def _needs_repo(cmd: click.Command) -> bool:
    return any("--repo" in getattr(p, "opts", []) for p in cmd.params)


@pytest.mark.parametrize(("path", "cmd"), [(p, c) for p, c in ALL if _needs_repo(c)], ids=lambda v: str(v))
def test_a_missing_repository_exits_2_in_one_line(
    path: tuple[str, ...], cmd: click.Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad input is exit 2 with one line, never 1 and never a traceback (other required values get a dummy)."""
    args = [*path, "--repo", str(tmp_path / "missing")]
    for p in cmd.params:
        if p.required and "--repo" not in getattr(p, "opts", []):
            args += ["x"] if isinstance(p, click.Argument) else [p.opts[0], "x"]
    monkeypatch.chdir(tmp_path)  # a dummy value may name a folder to create
    res = CliRunner().invoke(cli, args, env={"MLP_GITHUB_WEBHOOK_SECRET": None, "MLP_GITLAB_WEBHOOK_TOKEN": None})
    assert res.exit_code == 2, (path, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), (path, res.exception)
    assert len(res.output.strip().splitlines()) <= 4 and "Traceback" not in res.output, (path, res.output)


def test_version_names_the_commit() -> None:
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0
    assert re.fullmatch(r"mlp \S+ \(commit ([0-9a-f]{12}|unknown)\)\n", res.output), res.output


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    res = CliRunner().invoke(cli, ["completion", shell])
    assert res.exit_code == 0 and "_MLP_COMPLETE" in res.output
