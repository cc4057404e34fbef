"""The Jinja2 environment render uses: package templates, overridable from the repository.

Templates come from the platform repository (its `templates/` folder), so they are
untrusted input: they run in Jinja's `SandboxedEnvironment` (no attribute access to
Python internals) with `StrictUndefined` (a misspelt variable is an error, never an empty
string). A repository file `templates/kubernetes/inferenceservice.yaml.j2` replaces the
package's `mlp/render/templates/kubernetes/inferenceservice.yaml.j2`; `{% extends %}`
and `{% include %}` resolve the same way, and `package:NAME` always names the shipped
template (so an override can extend the original).

Every error is a `RenderError` located at the template file and line:
`templates/kubernetes/inferenceservice.yaml.j2:12: 'model' is undefined`.

The sandbox stops a template reaching Python, not burning CPU or memory: a nested
`range` loop, `'a' * 10**10` or unbounded macro recursion would hang or kill the
process that renders. So whenever the repository overrides a template, every template
of that render runs in a child process (`python` on this very file, which imports
nothing of mlp) that lowers its own resource limits before it reads a byte of input:
CPU seconds (`RLIMIT_CPU`), address space (`RLIMIT_AS`), no file writes, a recursion
limit, and a cap on each template's output. The parent also keeps a wall-clock deadline
and kills the child past it. Hitting any limit is one located `RenderError` with
`budget=True`. The package's own templates are trusted and render in-process.
Limits: `RenderBudget` (overridable with `MLP_RENDER_CPU_SECONDS`, `MLP_RENDER_MEMORY_MB`,
`MLP_RENDER_OUTPUT_MB`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

# The repository folder overrides come from (`mlp.sources.base.TEMPLATE_DIR`; render sits below
# sources in the import layers, so it names the folder itself, for error locations only).
TEMPLATE_DIR = "templates"
PACKAGE_DIR = Path(__file__).parent / "templates"
PACKAGE_PREFIX = "package:"


class RenderError(Exception):
    """Rendering failed; `str()` is one located line (`path:line: message`).

    `budget` is True when a resource limit stopped the template (CPU, memory, output,
    recursion): rendering the same templates again would fail the same way.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, budget: bool = False) -> None:
        self.path, self.line, self.detail, self.budget = path, line, message, budget
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(where + message)


def package_templates() -> dict[str, str]:
    """The shipped templates, keyed like overrides ("kubernetes/inferenceservice.yaml.j2")."""
    return {p.relative_to(PACKAGE_DIR).as_posix(): p.read_text("utf-8") for p in sorted(PACKAGE_DIR.rglob("*.j2"))}


_PACKAGE_CACHE: dict[str, str] | None = None


def _package() -> dict[str, str]:
    global _PACKAGE_CACHE
    if _PACKAGE_CACHE is None:
        _PACKAGE_CACHE = package_templates()
    return _PACKAGE_CACHE


class _Loader(jinja2.BaseLoader):
    """Overrides first, then the package; each template's filename is its display path."""

    def __init__(self, overrides: Mapping[str, str]) -> None:
        self.overrides = dict(overrides)

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        if not template.startswith(PACKAGE_PREFIX) and template in self.overrides:
            return self.overrides[template], f"{TEMPLATE_DIR}/{template}", lambda: True
        name = template.removeprefix(PACKAGE_PREFIX)
        source = _package().get(name)
        if source is None:
            raise jinja2.TemplateNotFound(template)
        return source, f"mlp/render/templates/{name}", lambda: True

    def list_templates(self) -> list[str]:
        return sorted(set(self.overrides) | set(_package()))


def _to_json(value: Any) -> str:
    """A value as JSON, which is valid YAML flow style: safe for any string (quotes, colons)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class RenderBudget:
    """What one render of repository templates may use, all of it in a child process."""

    cpu_seconds: int = 10
    memory_bytes: int = 512 << 20  # address space of the child (Python + Jinja need about 60 MiB)
    output_bytes: int = 1 << 20  # per template: one rendered object is a few KiB
    recursion: int = 400  # Python frames; a macro call costs a few

    @classmethod
    def from_environment(cls) -> RenderBudget:
        def number(name: str, default: int) -> int:
            try:
                return max(1, int(os.environ.get(name, "")))
            except ValueError:
                return default

        base = cls()
        return cls(
            cpu_seconds=number("MLP_RENDER_CPU_SECONDS", base.cpu_seconds),
            memory_bytes=number("MLP_RENDER_MEMORY_MB", base.memory_bytes >> 20) << 20,
            output_bytes=number("MLP_RENDER_OUTPUT_MB", base.output_bytes >> 20) << 20,
        )


class _BudgetExceeded(jinja2.exceptions.SecurityError):
    """An operation that would build something larger than the render budget allows."""


class _Sandbox(SandboxedEnvironment):
    # `*` and `**` are checked before they run: `'a' * 10**10` is refused, not attempted.
    intercepted_binops = frozenset({"*", "**"})
    output_limit = RenderBudget.output_bytes

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | bytes | list | tuple)
                    and isinstance(n, int)
                    and len(seq) * n > self.output_limit
                ):
                    raise _BudgetExceeded(
                        f"repeating a sequence of {len(seq)} {n} times exceeds the output budget of"
                        f" {self.output_limit} bytes"
                    )
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 256:
            raise _BudgetExceeded(f"{left} ** {right} is too large a number for a template")
        return super().call_binop(context, operator, left, right)


def make_environment(
    overrides: Mapping[str, str] | None = None, budget: RenderBudget | None = None
) -> SandboxedEnvironment:
    """The Jinja environment; with repository `overrides`, its templates render in a budgeted child."""
    env = _Sandbox(
        loader=_Loader(overrides or {}),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["json"] = _to_json
    if overrides:
        env._mlp_child = _Child(dict(overrides), budget or RenderBudget.from_environment())  # type: ignore[attr-defined]
    return env


def close_environment(env: jinja2.Environment) -> None:
    """Stop the environment's child renderer, if it has one."""
    child = getattr(env, "_mlp_child", None)
    if child is not None:
        child.close()


def display_path(env: jinja2.Environment, name: str) -> str:
    loader = env.loader
    assert isinstance(loader, _Loader)
    if not name.startswith(PACKAGE_PREFIX) and name in loader.overrides:
        return f"{TEMPLATE_DIR}/{name}"
    return f"mlp/render/templates/{name.removeprefix(PACKAGE_PREFIX)}"


def _template_line(exc: BaseException) -> tuple[str | None, int | None]:
    """The innermost template frame of a runtime error (Jinja rewrites tracebacks to template lines)."""
    found: tuple[str | None, int | None] = (None, None)
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if filename.startswith((f"{TEMPLATE_DIR}/", "mlp/render/templates/")):
            found = (filename, lineno)
    return found


def render_template(env: SandboxedEnvironment, name: str, context: Mapping[str, Any]) -> str:
    """Render one template, turning every failure into a located `RenderError`."""
    child = getattr(env, "_mlp_child", None)
    if child is not None:
        return str(child.render(env, name, context))
    return _render_here(env, name, context, None)


def _render_here(env: SandboxedEnvironment, name: str, context: Mapping[str, Any], limit: int | None) -> str:
    try:
        template = env.get_template(name)
        if limit is None:
            return template.render(**context)
        # Streamed, so a loop that emits without end stops at the limit instead of filling memory.
        parts: list[str] = []
        size = 0
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > limit:
                raise _BudgetExceeded(f"rendered output exceeds the budget of {limit} bytes")
            parts.append(chunk)
        return "".join(parts)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(
            f"template syntax error: {exc.message}",
            path=exc.filename or display_path(env, exc.name or name),
            line=exc.lineno,
        ) from None
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"template not found: {exc.name}", path=display_path(env, name)) from None
    except jinja2.UndefinedError as exc:
        where, line = _template_line(exc)
        raise RenderError(
            f"undefined variable: {exc.message}", path=where or display_path(env, name), line=line
        ) from None
    except _BudgetExceeded as exc:
        where, line = _template_line(exc)
        raise RenderError(
            f"over the render budget: {exc}", path=where or display_path(env, name), line=line, budget=True
        ) from None
    except jinja2.exceptions.SecurityError as exc:
        where, line = _template_line(exc)
        raise RenderError(
            f"not allowed in a template: {exc}", path=where or display_path(env, name), line=line
        ) from None
    except RecursionError as exc:
        where, line = _template_line(exc)
        raise RenderError(
            "over the render budget: recursion too deep (a macro or include that calls itself without end?)",
            path=where or display_path(env, name),
            line=line,
            budget=True,
        ) from None
    except MemoryError as exc:
        where, line = _template_line(exc)
        raise RenderError(
            "over the render budget: out of memory", path=where or display_path(env, name), line=line, budget=True
        ) from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        where, line = _template_line(exc)
        raise RenderError(f"{type(exc).__name__}: {exc}", path=where or display_path(env, name), line=line) from None
    except jinja2.TemplateError as exc:
        where, line = _template_line(exc)
        raise RenderError(f"template error: {exc}", path=where or display_path(env, name), line=line) from None


# Idle child renderers kept for the next render (a process start is ~0.15 s of CPU and much
# more wall time on a busy machine; the controller and `mlp up` render every few seconds).
_IDLE: list[tuple[RenderBudget, subprocess.Popen[bytes]]] = []
_IDLE_LOCK = threading.Lock()
MAX_IDLE = 2


def _drain_idle() -> None:
    with _IDLE_LOCK:
        idle = list(_IDLE)
        _IDLE.clear()
    for _, proc in idle:
        _kill(proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if stream is not None:
                stream.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


atexit.register(_drain_idle)


class _Child:
    """A child process rendering one environment's templates under `RenderBudget` (taken on first use).

    One `render()` call is one session: the child's CPU budget and the wall-clock deadline are
    reset when a session starts (the child sets its own CPU soft limit; templates cannot reach
    `resource`), and a child that finished a session cleanly goes back to a small idle pool.
    A child that hit a limit is killed, never reused.
    """

    def __init__(self, overrides: dict[str, str], budget: RenderBudget) -> None:
        self.overrides = overrides
        self.budget = budget
        self.proc: subprocess.Popen[bytes] | None = None
        self.deadline = 0.0
        self.failed: RenderError | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        b = self.budget
        with _IDLE_LOCK:
            while _IDLE:
                budget, proc = _IDLE.pop()
                if budget == b and proc.poll() is None:
                    self.proc = proc
                    break
                _kill(proc)
        if self.proc is None:
            self.proc = self._spawn(b)
        # Wall clock only guards against a child that is stuck without using CPU; CPU is the budget.
        self.deadline = time.monotonic() + b.cpu_seconds * 10 + 20
        self._send({"overrides": self.overrides})
        return self.proc

    @staticmethod
    def _spawn(b: RenderBudget) -> subprocess.Popen[bytes]:
        # -I: no user site or PYTHON* variables; -B: the child may not write files, not even bytecode.
        return subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-B",
                __file__,
                str(b.cpu_seconds),
                str(b.memory_bytes),
                str(b.output_bytes),
                str(b.recursion),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message, default=str).encode() + b"\n")
        self.proc.stdin.flush()

    def _receive(self) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        limit = self.budget.output_bytes * 6 + 65536  # JSON escapes a control character in six bytes
        data = bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not data.endswith(b"\n"):
                remaining = self.deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    return None
                chunk = os.read(fd, 1 << 16)
                if not chunk or len(data) + len(chunk) > limit:
                    return None
                data += chunk
        reply: dict[str, Any] = json.loads(data)
        return reply

    def render(self, env: jinja2.Environment, name: str, context: Mapping[str, Any]) -> str:
        if self.failed is not None:
            raise self.failed
        where = display_path(env, name)
        reply: dict[str, Any] | None = None
        try:
            if self.proc is None:
                self._start()
            self._send({"name": name, "context": context})
            reply = self._receive()
        except (BrokenPipeError, OSError, ValueError):
            reply = None
        if reply is None:
            self.failed = RenderError(self._death(), path=where, budget=True)
            self.close()
            raise self.failed
        if "error" in reply:
            message, path, line, budget = reply["error"]
            error = RenderError(message, path=path, line=line, budget=budget)
            if budget:
                self.failed = error  # a child that ran out of something is not reused
            raise error
        return str(reply["text"])

    def _death(self) -> str:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return f"over the render budget: rendering took longer than {self.deadline_seconds:.0f}s (stopped)"
        import signal

        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            return f"over the render budget: used more than {self.budget.cpu_seconds}s of CPU (stopped)"
        return f"over the render budget: the template renderer stopped (exit status {code})"

    @property
    def deadline_seconds(self) -> float:
        return float(self.budget.cpu_seconds * 10 + 20)

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.failed is None and proc.poll() is None:
            with _IDLE_LOCK:
                if len(_IDLE) < MAX_IDLE:
                    _IDLE.append((self.budget, proc))
                    return
        _kill(proc)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # also at interpreter exit, when globals may be gone
            self.close()


def _child_main(argv: list[str]) -> None:
    """The child renderer: lower the limits first, then render each job read from stdin."""
    import resource
    import signal

    cpu, memory, output, recursion = (int(a) for a in argv)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead of killing us
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)

    def cpu_budget() -> None:
        # SIGXCPU (which terminates) once this session has used `cpu` more seconds
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(usage.ru_utime + usage.ru_stime) + 1 + cpu
        if cpu_hard != resource.RLIM_INFINITY:
            soft = min(soft, cpu_hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))

    cpu_budget()
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.setrecursionlimit(recursion)
    _package()  # read the shipped templates before any template runs
    _Sandbox.output_limit = output
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    env = make_environment(None)
    for line in stdin:
        job = json.loads(line)
        if "overrides" in job:  # a new session: fresh templates, a fresh CPU budget
            env = make_environment(None)
            assert isinstance(env.loader, _Loader)
            env.loader.overrides = dict(job["overrides"] or {})
            cpu_budget()
            continue
        try:
            reply: dict[str, Any] = {"text": _render_here(env, job["name"], job["context"], output)}
        except RenderError as exc:
            reply = {"error": [exc.detail, exc.path, exc.line, exc.budget]}
        stdout.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    _child_main(sys.argv[1:])
