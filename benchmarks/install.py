"""Benchmark: the core install (no extras) into a fresh virtual environment.

What a CI job that only runs `mlp validate` pays: `python -m venv` + `pip install .`
from this checkout, timed as whole processes, then the size of the environment and of
what the install added (versus the empty venv, in the same run), the largest installed
distributions, and a smoke run of `mlp validate` on the example repository from that
environment (which proves validation needs no extra).

    python3.11 benchmarks/install.py                 # pip's cache off: every wheel downloaded
    python3.11 benchmarks/install.py --cache         # pip's normal cache (a warm CI cache)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def du(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def run(cmd: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--python",
        default=getattr(sys, "_base_executable", sys.executable),
        help="interpreter to create the venv with (default: the one running this)",
    )
    parser.add_argument("--cache", action="store_true", help="let pip use its cache (default: --no-cache-dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlp-install-"))
    venv = work / "venv"
    src = work / "src"
    try:
        # a clean copy of the project (no .venv, build/ or caches), as a fresh clone would be
        shutil.copytree(
            ROOT,
            src,
            ignore=shutil.ignore_patterns(
                ".venv",
                "build",
                "*.egg-info",
                ".git",
                "__pycache__",
                ".mypy_cache",
                ".ruff_cache",
                ".pytest_cache",
                ".mlp",
            ),
        )
        py = str(venv / "bin" / "python")
        t_venv = run([args.python, "-m", "venv", str(venv)])
        empty = du(venv)
        site = next((venv / "lib").glob("python3*/site-packages"))
        preinstalled = {entry.name for entry in site.iterdir()}  # pip (and setuptools) come with venv
        pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if not args.cache:
            pip.append("--no-cache-dir")
        cmd = [*pip, "."]
        print(f"$ {' '.join(['python', '-m', 'pip', *cmd[3:]])}   (in a copy of the checkout)", file=sys.stderr)
        t_pip = run(cmd, cwd=src)
        full = du(venv)
        listed = json.loads(
            subprocess.run(
                [py, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        sizes: dict[str, int] = {}
        for entry in site.iterdir():
            if entry.name in preinstalled:
                continue
            key = entry.name.split("-")[0].split(".")[0].lower().lstrip("_")
            sizes[key] = sizes.get(key, 0) + (du(entry) if entry.is_dir() else entry.stat().st_size)
        start = time.perf_counter()
        smoke = subprocess.run([str(venv / "bin" / "mlp"), "validate", str(ROOT)], capture_output=True, text=True)
        t_validate = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([str(venv / "bin" / "mlp"), "validate", "--help"], check=True, capture_output=True)
        t_help = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    version = subprocess.run([args.python, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"\ncore install (no extras), {version}, pip cache {'on' if args.cache else 'off'}\n")
    print("| step | wall time (s) |")
    print("|---|---:|")
    print(f"| `python -m venv venv` | {t_venv:.1f} |")
    print(f"| `pip install {'' if args.cache else '--no-cache-dir '}.` | {t_pip:.1f} |")
    print(f"| total | {t_venv + t_pip:.1f} |")
    print(
        f"\nvenv size: {full / 1e6:.1f} MB ({empty / 1e6:.1f} MB empty venv + {(full - empty) / 1e6:.1f} MB installed); "
        f"{len(listed)} distributions"
    )
    print(
        "largest added: "
        + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:8])
    )
    print(
        f"`mlp validate` on the example repository from this venv: exit {smoke.returncode} in {t_validate:.2f}s "
        f"({smoke.stdout.strip().splitlines()[-1] if smoke.stdout.strip() else smoke.stderr.strip()[-200:]}); "
        f"`--help` {t_help:.2f}s"
    )
    return 0 if smoke.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
