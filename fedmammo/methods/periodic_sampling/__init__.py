"""Periodic sampling of data segments, pooled and federated (paper 000)."""

from fedmammo.methods.periodic_sampling import client, params, plan, report, server
from fedmammo.methods.registry import Method, register

METHOD = register(
    Method(
        kind="periodic_sampling",
        description=__doc__.strip(),
        params=params.PeriodicSamplingParams,
        run=server.run,
        handlers=client.HANDLERS,
        report=report.section,
        plan=plan.plan,
        classifiers=("model",),
    )
)
