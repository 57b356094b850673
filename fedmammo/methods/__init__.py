"""The methods fedmammo runs, one folder each; importing this package registers them all.

Adding a method: write ``methods/<kind>/`` (params, client, server, report, and an
``__init__`` that calls :func:`fedmammo.methods.registry.register`) and add it to the import
line below. Nothing else changes. :func:`load_scenario` loads a scenario with every built-in
method registered.
"""

from fedmammo.config import load_scenario
from fedmammo.methods import (  # noqa: F401
    contrastive_dg,
    cyclegan_uda,
    fedavg,
    mtl_finetune,
    periodic_sampling,
    share_gans,
)
from fedmammo.methods.registry import METHODS, Method, get_method, register

__all__ = ["METHODS", "Method", "get_method", "load_scenario", "register"]
