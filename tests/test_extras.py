"""The base install: what works without Keras, TensorFlow and Matplotlib, and one line for what does not.

Each case runs the CLI in a subprocess in which those packages cannot be
imported, as in a fresh `pip install emorec` without extras.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import PHOTOS, require

from emorec.extras import install_hint, missing_message

BLOCKED = ("keras", "tensorflow", "matplotlib", "tf2onnx", "onnx", "fastapi", "uvicorn")


def run_without_extras(args: list[str], cwd) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None  # import fails as if not installed\n"
        "from emorec.cli import main\n"
        f"code = main({args!r})\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules if sys.modules[m] is not None} & set(%r))\n"
        "print('loaded:', loaded, file=sys.stderr)\n"
        "sys.exit(code)\n" % (BLOCKED,)
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=cwd)


@pytest.mark.parametrize("args, needs, extra", [
    (["train", "DATA", "--epochs", "1"], "keras", "train"),
    (["show", "DATA", "--out", "s.png"], "matplotlib", "train"),
    (["export", "bundled", "--out", "m.onnx"], "keras", "train"),
    (["predict", "MODEL", "PHOTO"], "keras", "train"),
    (["explain", "PHOTO", "--out", "explained"], "keras", "train"),
    (["serve", "--port", "0"], "fastapi", "serve"),
])
def test_commands_that_need_an_extra_say_so_in_one_line(args, needs, extra, fer_tree, seven_class_model, tmp_path):
    data = fer_tree(per_class=3)
    args = [{"DATA": str(data), "MODEL": str(seven_class_model), "PHOTO": str(require(PHOTOS) / "Avinash_14.jpg")}
            .get(a, a) for a in args]
    done = run_without_extras(args, tmp_path)
    assert done.returncode == 1
    [line] = [line for line in done.stderr.splitlines() if line.startswith("emorec ")]
    assert "Traceback" not in done.stderr
    assert line.startswith(f"emorec {args[0]}: error: ") and f"needs {needs}" in line
    assert f"pip install 'emorec[{extra}]'" in line


def test_predict_and_evaluate_run_on_the_base_install(fer_tree, tmp_path):
    done = run_without_extras(["predict", str(require(PHOTOS)), "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert len(results) == 56 and sum(bool(r["faces"]) for r in results) == 56
    assert "loaded: []" in done.stderr
    data = fer_tree(per_class=5, split="val")
    done = run_without_extras(["evaluate", "bundled", str(data), "--out", str(tmp_path / "report")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accuracy" in done.stdout and (tmp_path / "report" / "eval.json").is_file()
    assert not (tmp_path / "report" / "confusion_matrix.png").exists()
    assert "warning: no confusion_matrix.png: the plot needs matplotlib" in done.stderr
    assert "loaded: []" in done.stderr


def test_install_hints():
    assert install_hint("keras") == "pip install 'emorec[train]'"
    assert install_hint("matplotlib.figure") == "pip install 'emorec[train]'"
    assert install_hint("somethingelse") == "pip install somethingelse"
    assert missing_message("tensorflow", "training") == (
        "training needs tensorflow, which is not installed: pip install 'emorec[train]'")
