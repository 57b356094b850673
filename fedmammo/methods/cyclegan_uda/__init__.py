"""The CycleGAN-UDA paper's (004) whole-image experiment: source-only, in-domain and UDA
classifiers between a film and a digital centre, both directions; the target centre shares
only its CycleGAN generator."""

from fedmammo.methods.cyclegan_uda import client, params, plan, report, server
from fedmammo.methods.registry import Method, register

METHOD = register(
    Method(
        kind="cyclegan_uda",
        description=__doc__.strip(),
        params=params.CycleGanUdaParams,
        run=server.run,
        handlers=client.HANDLERS,
        report=report.section,
        plan=plan.plan,
        classifiers=("models",),
    )
)
