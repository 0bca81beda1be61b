"""The API process validates configs and lists methods without torch: importing the library's
light modules must not import torch, transformers or vllm."""

from __future__ import annotations

import json
import subprocess
import sys


def test_light_modules_do_not_import_torch() -> None:
    code = (
        "import sys, json\n"
        "import ensemble_core, ensemble_core.spec, ensemble_core.errors, ensemble_core.result\n"
        "from ensemble_core.methods import list_methods, validate_config\n"
        "from ensemble_core.bundled import default_ensemble_spec\n"
        "from ensemble_core.pool import ModelPool\n"
        "from ensemble_core.engine import run_ensemble\n"
        "from ensemble_core.selection.zscore import calibrate\n"
        "spec = default_ensemble_spec()\n"
        "validate_config(spec.default_ensemble_config)\n"
        "json.dumps(list_methods())\n"
        "ModelPool()\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
