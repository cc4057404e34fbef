"""Create the benchmark's own venv with MLflow's full server (`mlflow server`), the baseline.

The server lives apart from mlp's venv so its many pins never touch mlp's; the version is the
`mlflow-skinny` client's, so client and server speak the same protocol revision.

    python benchmarks/mlflow_venv.py            # prints the venv's `mlflow` executable
"""

from __future__ import annotations

import subprocess
import sys
import venv
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".mlflow-venv"


def mlflow_server_venv(path: Path = VENV) -> Path:
    """The `mlflow` executable of a venv holding the full MLflow at the client's version."""
    try:
        wanted = version("mlflow-skinny")
    except PackageNotFoundError:
        wanted = version("mlflow")
    exe = path / "bin" / "mlflow"
    stamp = path / f".mlflow-{wanted}"
    if stamp.exists() and exe.exists():
        return exe
    if not (path / "bin" / "python").exists():
        venv.create(path, with_pip=True)
    py = str(path / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "--quiet", f"mlflow=={wanted}"], check=True)
    stamp.touch()
    return exe


if __name__ == "__main__":
    print(mlflow_server_venv(Path(sys.argv[1]) if len(sys.argv) > 1 else VENV))
