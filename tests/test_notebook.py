"""The tutorial notebook runs top to bottom on a small slice of FER2013.

The notebook is executed with nbclient in a kernel that runs this very
interpreter (a throw-away kernelspec pointing at sys.executable), with the
notebook's parameters set through its EMOREC_* environment variables and
the folder that holds the `emorec` imported here put first on PYTHONPATH, so
the kernel tests the same code whether or not the package is pip-installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (installed with nbclient)
from jupyter_client.manager import KernelManager  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "emotion_recognition.ipynb"
DATA = REPO.parent / "shared" / "data"
CELL_TIMEOUT = 600  # seconds per cell; training one epoch on 280 images takes well under a minute

needs_data = pytest.mark.skipif(
    not (DATA / "fer2013" / "train").is_dir() or not (DATA / "photos").is_dir(),
    reason=f"shared data not found at {DATA}",
)


def emorec_parent() -> Path:
    """The folder the `emorec` package is imported from here (src/ when not installed)."""
    spec = importlib.util.find_spec("emorec")
    if spec is None or spec.origin is None:
        return REPO / "src"
    return Path(spec.origin).resolve().parents[1]


def kernel_manager(kernel_dir: Path, env: dict[str, str]) -> KernelManager:
    """A KernelManager for a kernelspec that runs sys.executable with env added to the environment."""
    spec_dir = kernel_dir / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (emorec test)",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def run_notebook(out: Path, kernel_dir: Path, subset: int, epochs: int):
    """Execute the notebook from notebooks/ with EMOREC_* set; returns the executed notebook."""
    pythonpath = [str(emorec_parent())] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {
        "EMOREC_SUBSET": str(subset),
        "EMOREC_EPOCHS": str(epochs),
        "EMOREC_ARCH": "seed",
        "EMOREC_OUT": str(out),
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        km=kernel_manager(kernel_dir, env),
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    return notebook


def tagged(notebook, tag: str) -> list:
    return [cell for cell in notebook.cells if tag in cell.get("metadata", {}).get("tags", [])]


def text_of(cell) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output.output_type == "stream")


def images_in(cells) -> int:
    return sum("image/png" in output.get("data", {}) for cell in cells for output in cell.get("outputs", []))


@needs_data
@pytest.mark.slow
def test_notebook_runs_end_to_end(tmp_path):
    out = tmp_path / "out"
    started = time.monotonic()
    notebook = run_notebook(out, tmp_path / "kernels", subset=40, epochs=1)
    print(f"notebook ran in {time.monotonic() - started:.0f} s")

    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors

    run_dir = out / "notebook-seed"
    assert (run_dir / "weights" / "best.keras").is_file()
    assert (run_dir / "val-eval" / "eval.json").is_file()
    assert (out / "samples.png").is_file() and (out / "samples_counts.png").is_file()
    assert len(list((out / "subset-40" / "train" / "happy").iterdir())) == 40

    (reload_cell,) = tagged(notebook, "reload")
    reload_text = text_of(reload_cell)
    assert "classes: ['angry', 'disgust', 'fear', 'happy', 'neutral', 'sad', 'surprise']" in reload_text
    assert "colour mode: grayscale" in reload_text and "predicted:" in reload_text

    predict_cells = tagged(notebook, "predict")
    assert len(predict_cells) == 3 and all(cell.outputs for cell in predict_cells)
    fer_lines = text_of(predict_cells[0]).strip().splitlines()
    assert len(fer_lines) == 2 and "box: None" in fer_lines[1], fer_lines  # detect=False: the crop is classified whole
    for cell in predict_cells[1:]:  # one line per photo, for the trained and the bundled model
        lines = text_of(cell).strip().splitlines()
        assert len(lines) == 3 and all(" true " in line for line in lines), lines
    assert images_in(predict_cells) == 2

    video_cells = tagged(notebook, "video")  # two people walking towards each other: two tracks, one plot
    people = text_of(video_cells[0]).strip().splitlines()
    assert [line.split(":")[0] for line in people] == ["person #1", "person #2"], people
    assert images_in(video_cells) == 1

    (explain_cell,) = tagged(notebook, "explain")  # 3 val faces the bundled model gets right, 3 it gets wrong
    verdicts = [line.split()[0] for line in text_of(explain_cell).strip().splitlines()[1:]]
    assert verdicts == ["right"] * 3 + ["wrong"] * 3
    assert sum("image/jpeg" in output.get("data", {}) for output in explain_cell.outputs) == 2

    # Every figure is shown inline: samples, counts, a batch, 2 curves, confusion matrix, 2 photo rows.
    assert images_in(notebook.cells) >= 8
