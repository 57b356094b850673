"""FedAvg of a whole-mammogram classifier, with local and pooled reference arms."""

from fedmammo.methods.fedavg import client, params, plan, report, server
from fedmammo.methods.registry import Method, register

METHOD = register(
    Method(
        kind="fedavg",
        description=__doc__.strip(),
        params=params.FedAvgParams,
        run=server.run,
        handlers=client.HANDLERS,
        report=report.section,
        plan=plan.plan,
        classifiers=("model",),
    )
)
