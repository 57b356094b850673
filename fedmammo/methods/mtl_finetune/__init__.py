"""Multi-task learning with missing and uncertain labels, then fine-tuning (paper 001)."""

from fedmammo.methods.mtl_finetune import audit, client, params, plan, report, server
from fedmammo.methods.registry import Method, register

METHOD = register(
    Method(
        kind="mtl_finetune",
        description=__doc__.strip(),
        params=params.MtlFinetuneParams,
        run=server.run,
        handlers=(*client.HANDLERS, audit.mtl_audit),
        report=report.section,
        plan=plan.plan,
    )
)
