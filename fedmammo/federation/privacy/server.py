"""Server side of per-centre DP: ledger names, the plan sent with train messages, privacy.json.

Every arm and seed of a run is a separate what-if deployment with its own ledger
(``<arm>|<seed>``; a shared generator: ``<generator>|<seed>``). :class:`ArmPrivacy` sends each
train message the ledger and the rounds planned for it, records the replies' ``privacy``
records and refusals in privacy.json and tells the runner to stop an arm a centre refused;
:func:`run_audits` asks every training centre to audit an arm's final model. The centre side
(ledgers on the centre's own disk, DP sessions, refusals) is
:mod:`fedmammo.federation.privacy.ledger`.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Message

from fedmammo.federation.console import safe
from fedmammo.federation.messages import (
    ARRAYS,
    AUDIT,
    METRICS,
    PRIVACY,
    AuditMetrics,
    EvaluateAudit,
    LedgerFields,
    decode_attacks,
)
from fedmammo.federation.privacy.codec import decode_privacy
from fedmammo.federation.privacy.ledger import is_refusal

__all__ = [
    "ArmPrivacy",
    "audits_enabled",
    "generator_privacy_config",
    "ledger_of",
    "record_generator_privacy",
    "record_generator_refusal",
    "run_audits",
]

#: An attack's scores kept in the run's records (``attack_<name>``, ``logan_attack_<name>``,
#: ``lira_attack_<name>``); privacy.json keeps every score and count.
RECORDED = ("auc", "tpr_at_1pct_fpr", "tpr_bound_at_1pct_fpr", "epsilon_lower_95")


def ledger_of(arm: str, seed: int) -> str:
    """The ledger of an arm and seed: each is a separate what-if deployment."""
    return f"{arm}|{seed}"


def audits_enabled(scenario: Any) -> bool:
    """Audit when the scenario sets ``privacy:`` (even non-DP) or any centre trains with DP."""
    return scenario.privacy is not None or any(
        p.privacy.enabled for p in scenario.resolved_profiles.values()
    )


class ArmPrivacy:
    """Server side of one arm's DP: the plan sent to centres, privacy.json and refusals."""

    def __init__(
        self,
        orc: Any,
        *,
        arm: str,
        seed: int,
        centres: list[str],
        first_round: int,
        last_round: int,
    ):
        from fedmammo.evaluation.privacy_report import NO_DP_NOTE, PrivacyLog

        self.orc, self.arm, self.seed = orc, arm, int(seed)
        self.ledger = ledger_of(arm, seed)
        self.planned_rounds = int(last_round - first_round + 1)
        self.log = PrivacyLog(orc.run_dir)
        if not any(p.privacy.enabled for p in orc.scenario.resolved_profiles.values()):
            self.log.note(NO_DP_NOTE)
        elif "pooled" in centres:
            self.log.note(f"arm {arm} is not private: the pooled what-if trains without DP")

    def config(self) -> dict[str, Any]:
        """Fields of every train message: the ledger and the rounds planned for it."""
        return dict(ledger=self.ledger, planned_rounds=self.planned_rounds)

    def node_config(self, centres: list[str]) -> dict[str, dict[str, str]]:
        """On resume: each centre's ledger as recorded so far, rounds since the resume
        included (its node state did not survive; the centre compares it with its own)."""
        if not getattr(self.orc.spec, "resume", False):
            return {}
        out = {}
        for c in centres:
            prior = self.log.ledger_state(c, self.ledger)
            if prior is not None:
                out[c] = dict(prior=json.dumps(prior))
        return out

    def after_round(
        self, rnd: int, replies: list[Message], names: dict[int, str], failures: dict[str, str]
    ) -> bool:
        """Record the round's privacy reports and refusals; True when a centre refused."""
        for msg in replies:
            if not msg.has_error() and PRIVACY in msg.content:
                self.log.record(
                    centre=names.get(msg.metadata.src_node_id, "?"),
                    arm=self.arm,
                    seed=self.seed,
                    report=decode_privacy(msg.content[PRIVACY]),
                    round=rnd,
                )
        refused = {c: r for c, r in failures.items() if is_refusal(r)}
        for centre, reason in refused.items():
            self.log.refusal(
                centre=centre,
                arm=self.arm,
                seed=self.seed,
                round=rnd,
                reason=" ".join(reason.split())[-500:],
            )
            self.orc.recorder.stop_arm(
                self.arm,
                self.seed,
                f"arm {self.arm} seed {self.seed}: stopped before round {rnd}: centre {centre} "
                "refused it (privacy budget); the model of the last completed round is final",
            )
            self.orc.console.print(
                f"[yellow]centre {safe(centre)} refused round {rnd} of arm "
                f"{safe(self.arm)} (privacy budget): stopping this arm[/]"
            )
        self.log.write()
        if refused:
            self.orc.recorder.flush()
        return bool(refused)


def run_audits(
    orc: Any,
    message: type[LedgerFields] = EvaluateAudit,
    *,
    arm: str,
    seed: int,
    arrays: Any,
    centres: list[str],
    **fields: Any,
) -> None:
    """Loss-threshold membership audit of a final model inside each training centre.

    Only when :func:`audits_enabled`. ``message`` is the audit's kind (:class:`EvaluateAudit`
    for a classifier, the multi-task method's for its net) and ``fields`` its fields beyond
    arm, seed and ledger (the model spec, say). The replies (:class:`AuditMetrics`) are
    recorded in results.json (split ``audit``) and privacy.json (``audits``).
    """
    from fedmammo.evaluation.privacy_report import PrivacyLog
    from fedmammo.seeds import derive_seed

    centres = [c for c in centres if c != "pooled"]
    if not centres or not audits_enabled(orc.scenario):
        return
    ledger = ledger_of(arm, seed)
    recorded = PrivacyLog(orc.run_dir)
    contents = {}
    for c in centres:
        prior = recorded.ledger_state(c, ledger) if getattr(orc.spec, "resume", False) else None
        m = orc.message(
            message,
            arm=arm,
            seed=derive_seed(seed, arm, c, "audit"),
            run_seed=seed,
            ledger=ledger,
            # a resumed run's node has lost its ledgers: the recorded one
            prior=None if prior is None else json.dumps(prior),
            **fields,
        )
        contents[c] = m.content({ARRAYS: arrays})
    replies, failures = orc.send(message.KIND, contents)
    orc.record_failures(failures, arm=arm, seed=seed, rnd=None, phase="audit")
    log = PrivacyLog(orc.run_dir)
    for c, content in replies.items():
        result = AuditMetrics.from_metrics(content[METRICS]).scores()
        rows = [{"metric": f"attack_{k}", "value": v} for k, v in result.items() if k in RECORDED]
        rows += [  # offline LiRA, when the recipe asks for shadow models
            {"metric": f"lira_attack_{k}", "value": result[f"lira_{k}"]}
            for k in RECORDED
            if f"lira_{k}" in result
        ]
        orc.recorder.add(rows, arm=arm, seed=seed, centre=c, split="audit")
        log.audit(centre=c, arm=arm, seed=seed, result=result)
    log.write()
    orc.recorder.flush()


def generator_privacy_config(orc: Any, centre: str, name: str, seed: int) -> dict[str, Any]:
    """Fields of a ``train.generator`` message: its own ledger, one planned round, audit flag
    (when :func:`audits_enabled` and ``centre`` shares audit results).

    Each shared generator is its own what-if ledger: an arm samples at most one generator
    per sharing centre, so the generators a centre trains are alternative deployments.
    """
    profile = orc.scenario.resolved_profiles.get(centre)
    audit = audits_enabled(orc.scenario) and (profile is None or profile.sharing.audits)
    return dict(ledger=ledger_of(name, seed), planned_rounds=1, audit=audit)


#: privacy.json's note once a generator trained with a DP discriminator replied.
GENERATOR_LEDGER_NOTE = (
    "generators: each shared generator is one ledger (phase 'gan', DP discriminator); the "
    "unit of privacy is one lesion patch (a lesion seen in CC and MLO is two patches)"
)


def record_generator_privacy(orc: Any, *, centre: str, name: str, seed: int, content: Any) -> None:
    """privacy.json and the records of a ``train.generator`` reply's privacy and audit."""
    from fedmammo.evaluation.privacy_report import PrivacyLog

    if PRIVACY not in content and AUDIT not in content:
        return
    log = PrivacyLog(orc.run_dir)
    if PRIVACY in content:  # DP: a generator audited without DP has no ledger to explain
        log.note(GENERATOR_LEDGER_NOTE)
        report = decode_privacy(content[PRIVACY])
        log.record(centre=centre, arm=name, seed=seed, report=report, round=None)
    if AUDIT in content:
        results = decode_attacks(content[AUDIT])
        rows = []
        for attack, result in results.items():
            log.audit(centre=centre, arm=name, seed=seed, result=result, attack=attack)
            prefix = "attack" if attack == "gan_leaks" else f"{attack}_attack"
            rows += [
                {"metric": f"{prefix}_{k}", "value": v} for k, v in result.items() if k in RECORDED
            ]
        orc.recorder.add(rows, arm=name, seed=seed, centre=centre, split="audit")
    log.write()


def record_generator_refusal(orc: Any, *, centre: str, name: str, seed: int, reason: str) -> None:
    """privacy.json: a centre refused to train a generator (its budget); arms using it skip."""
    from fedmammo.evaluation.privacy_report import PrivacyLog

    if not is_refusal(reason):
        return
    log = PrivacyLog(orc.run_dir)
    log.refusal(centre=centre, arm=name, seed=seed, round=None, reason=" ".join(reason.split()))
    log.write()
    orc.console.print(
        f"[yellow]centre {safe(centre)} refused generator {safe(name)} (privacy budget)[/]"
    )
