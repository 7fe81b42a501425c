"""The operator path never imports torch: its image is slim."""

from __future__ import annotations

import subprocess
import sys


def test_operator_path_does_not_import_torch():
    code = (
        "import sys, alignops.operator, alignops.api, alignops.planner, alignops.storage, alignops.demo, alignops.cli.main\n"
        "import pkgutil, importlib, alignops.operator as op\n"
        "for m in pkgutil.walk_packages(op.__path__, 'alignops.operator.'): importlib.import_module(m.name)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'vllm', 'deepspeed') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the operator path imported {out.stdout.strip()}"


def test_api_does_not_import_operator_or_workloads():
    # every module of alignops.api, not only the one the CRD generator happens to reach
    code = (
        "import sys, pkgutil, importlib, alignops.api as api\n"
        "for m in pkgutil.walk_packages(api.__path__, 'alignops.api.'): importlib.import_module(m.name)\n"
        "assert 'alignops.api.crd' in sys.modules\n"
        "print([m for m in sys.modules if m.startswith(('alignops.operator', 'alignops.workloads', 'kopf', 'torch'))])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
