"""The API process never imports torch; the layer contracts hold."""

from __future__ import annotations

import subprocess
import sys

from tests.services import ROOT


def test_importing_the_app_does_not_import_torch():
    code = (
        "import sys; import ensemblehub.api as m; m.app; import api.routes.ensemble; "
        "from ensemble_core.methods import list_methods, validate_config; list_methods(); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
