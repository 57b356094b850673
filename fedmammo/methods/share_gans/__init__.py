"""GAN sharing: centres share trained generators instead of images (paper 003; CycleGAN
harmonisation from paper 004)."""

from fedmammo.methods.registry import Method, register
from fedmammo.methods.share_gans import client, params, plan, receiver, report, server

METHOD = register(
    Method(
        kind="share_gans",
        description=" ".join(__doc__.split()),
        params=params.ShareGansParams,
        run=server.run,
        handlers=(
            *client.HANDLERS,
            receiver.train_patch_classifier_handler,
            receiver.patch_gain_handler,
        ),
        report=report.section,
        plan=plan.plan,
        roles=("train", "receiver", "sharer", "test"),
    )
)
