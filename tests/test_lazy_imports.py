"""A simulated centre (a Ray actor running the ClientApp) starts small: importing the apps
loads no plotting, scikit-learn, Opacus, torchvision, pydicom or SciPy; those load where they
are used (issue 19).

Each check imports in a fresh interpreter (this test process has them all loaded already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: Libraries a centre loads only when a handler needs them (DP, a plot, a metric, a
#: torchvision model, a cache to build from DICOM, a generator to score).
LAZY = ("matplotlib", "sklearn", "opacus", "torchvision", "pydicom", "scipy")

#: The ClientApp module, then what Flower loads in every Ray actor (the apps component).
CENTRE_MODULES = ("fedmammo.federation.client_app", "fedmammo.apps")

PROBE = """
import importlib, json, sys
seen = {{}}
for module in {modules!r}:
    importlib.import_module(module)
    seen[module] = sorted(m for m in {lazy!r} if m in sys.modules)
print(json.dumps(seen))
"""


#: A fresh interpreter's last check: ``module`` (a PEP 562 lazy module) still refuses a name it
#: does not have, then "ok".
UNKNOWN_NAME = (
    "try:\n"
    "    {module}.no_such_name\n"
    "except AttributeError as exc:\n"
    "    assert 'no_such_name' in str(exc)\n"
    "else:\n"
    "    raise SystemExit('no AttributeError')\n"
    "print('ok')\n"
)


def fresh(code: str) -> str:
    """What ``code`` prints in a fresh interpreter (its error output if it fails)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def loaded_by(modules: tuple[str, ...], lazy: tuple[str, ...] = LAZY) -> dict[str, list[str]]:
    """module -> which of ``lazy`` one fresh interpreter holds after importing it (in order)."""
    return json.loads(fresh(PROBE.format(modules=modules, lazy=lazy)).splitlines()[-1])


def test_a_centre_imports_no_plotting_sklearn_opacus_torchvision_pydicom_or_scipy() -> None:
    assert loaded_by(CENTRE_MODULES) == {m: [] for m in CENTRE_MODULES}


def test_the_probe_sees_a_library_that_is_loaded() -> None:
    """The check above would notice a module that loads one of them."""
    assert loaded_by(("matplotlib.figure",), ("matplotlib", "sklearn")) == {
        "matplotlib.figure": ["matplotlib"]
    }


def test_the_lazy_names_still_load_on_first_use() -> None:
    code = (
        "import sys, fedmammo.evaluation as ev\n"
        "assert 'sklearn' not in sys.modules\n"
        "assert ev.classification_metrics([0, 1, 1], [0.2, 0.9, 0.6])['auroc'] == 1.0\n"
        "assert 'sklearn' in sys.modules\n"
        "from fedmammo.evaluation import markdown_table, weighted_log_loss  # noqa: F401\n"
        "assert 'weighted_log_loss' in dir(ev)\n"
        "missing = [n for n in ev.__all__ if not hasattr(ev, n)]  # every export resolves\n"
        "assert not missing, missing\n" + UNKNOWN_NAME.format(module="ev")
    )
    assert fresh(code) == "ok"


def test_torchvision_model_families_register_on_first_lookup() -> None:
    """The contrastive encoders and FCOS are built by name although ``fedmammo.models`` no
    longer imports their modules; a plain classifier is built without torchvision."""
    code = (
        "import sys\n"
        "from fedmammo.models import build_model, has_model, list_models\n"
        "build_model('mammo_cnn')\n"
        "assert has_model('mammo_cnn') and 'torchvision' not in sys.modules\n"
        "assert has_model('fcos') and 'torchvision' in sys.modules  # its family, imported\n"
        "assert not has_model('no_such_model')\n"
        "enc = build_model('contrastive_resnet_slim', width=8, blocks=[1, 1, 1, 1])\n"
        "assert type(enc).__name__ == 'ContrastiveEncoder', type(enc)\n"
        "assert 'torchvision' in sys.modules\n"
        "names = list_models()\n"
        "assert {'fcos', 'contrastive_resnet50', 'mammo_cnn', 'swin_t'} <= set(names), names\n"
        "print('ok')\n"
    )
    assert fresh(code) == "ok"


def test_planning_a_run_without_dp_or_torchvision_models_loads_neither() -> None:
    """The simulate command checks every planned model (built on the meta device) and, at a
    DP centre, its layers: a plain FedAvg plan needs neither Opacus (about 1.1 s) nor
    torchvision's model families (0.6 s), so ``--check`` and a run's start skip them; a
    misspelt model name still lists every valid one."""
    code = (
        f"scenario = {str(Path(__file__).parents[1] / 'scenarios' / 'fedavg_quick.yaml')!r}\n"
        "import sys\n"
        "from fedmammo.config import load_scenario\n"
        "from fedmammo.errors import ConfigError\n"
        "from fedmammo.methods.planning import plan_scenario\n"
        "quick = load_scenario(scenario, quick=True)\n"
        "assert plan_scenario(quick, quick=True)\n"
        "assert 'opacus' not in sys.modules and 'torchvision' not in sys.modules\n"
        "bad = load_scenario(scenario, quick=True,\n"
        "                    sets={'strategy.params.model.name': 'mamo_cnn'})\n"
        "try:\n"
        "    plan_scenario(bad, quick=True)\n"
        "except ConfigError as exc:\n"
        "    assert \"unknown model 'mamo_cnn'; valid models:\" in str(exc), exc\n"
        "    assert 'contrastive_resnet50' in str(exc) and 'mammo_cnn' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no ConfigError')\n"
        "print('ok')\n"
    )
    assert fresh(code) == "ok"


def test_quiet_libraries_tames_opacus_without_importing_it() -> None:
    """The apps no longer import Opacus to tame its root handler; Opacus imported later (a
    DP centre) adds none, so its INFO lines stay off the console."""
    code = (
        "import logging, sys\n"
        "from fedmammo.federation.run_log import quiet_libraries\n"
        "quiet_libraries()\n"
        "assert 'opacus' not in sys.modules\n"
        "before = list(logging.getLogger().handlers)\n"
        "import opacus  # noqa: F401\n"
        "assert logging.getLogger().handlers == before, logging.getLogger().handlers\n"
        "assert all(h.level >= logging.WARNING for h in before), before\n"
        "print('ok')\n"
    )
    assert fresh(code) == "ok"


def test_the_cache_reads_dicom_through_the_reader_it_imports_on_first_use() -> None:
    """``fedmammo.data.cache`` opens built caches without the reader; its ``load_mammogram``
    (which builds read, and tests replace) is the reader's, imported when first asked for."""
    code = (
        "import sys\n"
        "import fedmammo.data.cache as cache\n"
        "assert 'pydicom' not in sys.modules and 'scipy' not in sys.modules\n"
        "loader = cache.load_mammogram\n"
        "assert 'pydicom' in sys.modules and 'scipy' in sys.modules  # asked for: imported\n"
        "from fedmammo.data.dicom import load_mammogram\n"
        "assert loader is load_mammogram\n" + UNKNOWN_NAME.format(module="cache")
    )
    assert fresh(code) == "ok"
