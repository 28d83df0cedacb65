"""Execute one chapter (jupytext MyST .md) with nbclient from its own folder; exit 1 on error.

Usage: ``ANNEALVI_PRESET=quick python scripts/run_notebook.py notebooks/03_collapse_probability.md [out.ipynb]``
"""

import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient


def main() -> int:
    path = Path(sys.argv[1]).resolve()
    nb = jupytext.read(path)
    t = time.perf_counter()
    try:
        NotebookClient(nb, timeout=3000, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if len(sys.argv) > 2:
            nbformat.write(nb, sys.argv[2])
    print(f"{path.name}: executed in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
