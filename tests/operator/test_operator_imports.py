"""The operator image is slim: importing the operator never imports torch (or transformers)."""

import subprocess
import sys

CHECK = """
import sys
import alignops.operator
import alignops.operator.handlers, alignops.operator.main, alignops.operator.reconcile, alignops.operator.controller
import alignops.cli.main
heavy = sorted(m for m in ("torch", "transformers", "safetensors", "numpy.linalg._umath_linalg_torch") if m in sys.modules)
print(",".join(heavy))
"""


def test_operator_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_the_check_would_see_torch():
    # the same probe does report torch when something imports it, so the test above can fail
    done = subprocess.run([sys.executable, "-c", "import torch\n" + CHECK], capture_output=True, text=True, timeout=120)
    assert "torch" in done.stdout
