"""Contrastive pre-training for unseen vendors (Li et al.), federated: style banks built at the
centres from shared tile generators, FedAvg of the encoder, local downstream tasks."""

from fedmammo.methods.contrastive_dg import client, params, plan, report, server
from fedmammo.methods.registry import Method, register

METHOD = register(
    Method(
        kind="contrastive_dg",
        description=__doc__.strip(),
        params=params.ContrastiveDgParams,
        run=server.run,
        handlers=client.HANDLERS,
        report=report.section,
        plan=plan.plan,
    )
)
