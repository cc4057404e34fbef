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
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Mapping
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
    """Rendering failed; `str()` is one located line (`path:line: message`)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path, self.line, self.detail = path, line, message
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


def make_environment(overrides: Mapping[str, str] | None = None) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=_Loader(overrides or {}),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["json"] = _to_json
    return env


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
    try:
        template = env.get_template(name)
        return template.render(**context)
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
    except jinja2.exceptions.SecurityError as exc:
        where, line = _template_line(exc)
        raise RenderError(
            f"not allowed in a template: {exc}", path=where or display_path(env, name), line=line
        ) from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        where, line = _template_line(exc)
        raise RenderError(f"{type(exc).__name__}: {exc}", path=where or display_path(env, name), line=line) from None
    except jinja2.TemplateError as exc:
        where, line = _template_line(exc)
        raise RenderError(f"template error: {exc}", path=where or display_path(env, name), line=line) from None
