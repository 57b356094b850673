"""The egress guard checks content, not claims: forged payloads, one test per rule."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from helpers.flower_messages import make_incoming
from helpers.run_helpers import REPO

from fedmammo.errors import ConfigError
from fedmammo.federation.egress import (
    DOCS_PAGES,
    REFUSALS_METRIC,
    EgressError,
    EgressLimits,
    check_outgoing,
    declare_egress,
    egress_error_mod,
    egress_mod,
    refusal_count,
    scrub,
)


@pytest.fixture()
def model_state():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4, 2)).state_dict()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _forged(dtype: str, shape: tuple[int, ...], data: bytes, stype="numpy.ndarray") -> Array:
    return Array(dtype=dtype, shape=shape, stype=stype, data=data)


def _context(**node_config) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def _incoming(arrays: dict | None = None) -> Message:
    content = RecordDict({"config": ConfigRecord({"arm": "x"})})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return make_incoming(content, "train.classifier")


def _guarded(msg: Message, context: Context, handler) -> Message:
    """The ClientApp's reply path: egress_error_mod(egress_mod(handler))."""
    return egress_error_mod(msg, context, lambda m, c: egress_mod(m, c, handler))


def _reason(reply: Message) -> str:
    assert reply.has_error()
    return reply.error.reason


# ---------------------------------------------------------------- bytes = dtype x shape
def test_trailing_bytes_behind_a_small_declared_shape_are_refused(model_state):
    # Prepare: the bias of Linear(4, 2) (2 floats) followed by a 77 KB hidden payload
    genuine = _npy(np.zeros(2, dtype=np.float32))
    forged = _forged("float32", (2,), genuine + b"\x00" * 77_000)
    state = {k: v for k, v in model_state.items() if k != "1.bias"}
    record = ArrayRecord(state)
    record["1.bias"] = forged
    # Execute / Assert
    with pytest.raises(EgressError, match=r"1.bias.*77008 bytes.*expected 8"):
        check_outgoing(RecordDict({"arrays": record}), model_state)


def test_a_header_that_disagrees_with_the_declared_shape_is_refused(model_state):
    # Prepare: Array says (2,), its bytes are a (64, 64) image
    forged = _forged("float32", (2,), _npy(np.zeros((64, 64), dtype=np.float32)))
    record = ArrayRecord(model_state)
    record["1.bias"] = forged
    # Execute / Assert
    with pytest.raises(EgressError, match=r"declares float32\(2,\) but its bytes hold"):
        check_outgoing(RecordDict({"arrays": record}), model_state)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (_forged("float32", (2,), b"raw bytes", stype="torch.Tensor"), "serialisation"),
        (_forged("float32", (2,), b"\x93NUMPY garbage"), "unreadable"),
        (_forged("<U4", (2,), _npy(np.array(["ab", "cd"]))), "not numeric"),
    ],
)
def test_unverifiable_arrays_are_refused(model_state, array, match):
    record = ArrayRecord(model_state)
    record["1.bias"] = array
    with pytest.raises(EgressError, match=match):
        check_outgoing(RecordDict({"arrays": record}), model_state)


def test_a_wider_dtype_than_the_model_is_refused(model_state):
    state = dict(model_state)
    state["1.weight"] = torch.zeros(2, 4, dtype=torch.float64)  # twice the declared bytes
    with pytest.raises(EgressError, match="wider"):
        check_outgoing(RecordDict({"arrays": ArrayRecord(state)}), model_state)


# ---------------------------------------------------------------- caps
def test_more_model_copies_than_declared_are_refused(model_state):
    content = RecordDict({f"gen-{i}": ArrayRecord(model_state) for i in range(3)})
    check_outgoing(content, model_state, copies=3)  # as declared: passes
    with pytest.raises(EgressError, match=r"3 array records.*declared 2"):
        check_outgoing(content, model_state, copies=2)


def test_record_and_key_caps(model_state):
    many_records = RecordDict({f"m{i}": MetricRecord({"x": 1.0}) for i in range(5)})
    with pytest.raises(EgressError, match=r"5 records.*limit 4"):
        check_outgoing(many_records, None, limits=EgressLimits(max_records=4))
    many_keys = RecordDict({"m": MetricRecord({f"k{i}": 1.0 for i in range(5000)})})
    with pytest.raises(EgressError, match=r"5000 keys"):
        check_outgoing(many_keys, model_state)  # default: 4096 scalar keys + model keys


def test_total_bytes_cap_is_derived_from_the_model_and_overridable_per_centre(model_state):
    # Prepare: a reply of exactly one model (4*1*3*3 + 4 + 2*4 + 2 floats = 200 bytes)
    content = RecordDict({"arrays": ArrayRecord(model_state), "metrics": MetricRecord({"n": 1})})
    ctx_small = _context(**{"egress-max-bytes": 100})

    def handler(msg, context):
        declare_egress(context, model_state, copies=1)
        return Message(content, reply_to=msg)

    # Execute
    passed = _guarded(_incoming(), _context(), handler)
    refused = _guarded(_incoming(), ctx_small, handler)
    # Assert
    assert not passed.has_error()
    assert _reason(refused).startswith("egress: EgressError: reply exceeds 100 bytes")
    with pytest.raises(EgressError, match="exceeds 250 bytes"):
        big = RecordDict({"m": MetricRecord({f"k{i}": 1.0 for i in range(40)})})
        check_outgoing(big, None, limits=EgressLimits(max_bytes=250))


# ---------------------------------------------------------------- image-like arrays
def test_image_echoed_under_an_undeclared_reference_is_refused():
    # Prepare: the server sends an image-shaped "weight"; the handler declares nothing
    image = {"w": torch.rand(1, 64, 48)}

    def echo(msg, context):
        return Message(RecordDict({"arrays": ArrayRecord(image)}), reply_to=msg)

    # Execute
    reply = _guarded(_incoming(image), _context(), echo)
    # Assert
    assert "image-like (1, 64, 48)" in _reason(reply)


def test_image_sized_model_tensors_pass_only_when_declared():
    # Prepare: a Linear(64, 64) weight is image-sized but a declared model tensor
    state = torch.nn.Linear(64, 64).state_dict()

    def declared(msg, context):
        declare_egress(context, state)
        return Message(RecordDict({"arrays": ArrayRecord(state)}), reply_to=msg)

    # Execute
    reply = _guarded(_incoming(state), _context(), declared)
    # Assert
    assert not reply.has_error()
    with pytest.raises(EgressError, match=r"\(32, 32\) \(image-like\)"):
        forged = dict(state, weight=torch.zeros(32, 32))
        check_outgoing(RecordDict({"arrays": ArrayRecord(forged)}), state)


# ---------------------------------------------------------------- strings
def test_quoted_values_in_config_strings_are_scrubbed_and_paths_refused():
    content = RecordDict({"info": ConfigRecord({"note": "label 'patient 0042' skipped"})})
    clean = check_outgoing(content, None)
    assert clean["info"]["note"] == "label '<value>' skipped"
    with pytest.raises(EgressError, match="path"):
        check_outgoing(RecordDict({"info": ConfigRecord({"x": ["ok", "/srv/a.dcm"]})}), None)


def test_bytes_leave_only_in_a_declared_opaque_record():
    content = RecordDict({"secagg": ConfigRecord({"keys": [b"k" * 100, b"k" * 100]})})
    with pytest.raises(EgressError, match="holds bytes"):
        check_outgoing(content, None)
    check_outgoing(content, None, opaque={"secagg": 200})
    with pytest.raises(EgressError, match="200 opaque bytes"):
        check_outgoing(content, None, opaque={"secagg": 150})


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("cannot read /data/site_a/P001_L_CC.dcm", "/data/site_a"),
        ("bad label 'P001 left breast' in row 3", "P001"),
        ("missing C:\\scans\\b.dcm", "scans"),
        ("see ./cache/manifest.csv", "manifest"),
        ('value "secret-id" rejected', "secret-id"),
    ],
)
def test_scrub_removes_paths_and_quoted_values(text, hidden):
    out = scrub(text)
    assert hidden not in out and ("<path>" in out or "<value>" in out)


def test_scrub_keeps_fedmammos_own_docs_pages_only():
    text = "fix: give the centre labels (docs/datasets.md); see docs/jane_doe.md, /x/docs/report.md"
    assert scrub(text) == "fix: give the centre labels (docs/datasets.md); see <path>, <path>"
    pages = sorted(p.stem for p in (REPO / "docs").glob("*.md"))
    assert pages == sorted(DOCS_PAGES)  # the list follows the repository's docs


# ---------------------------------------------------------------- error replies, refusals
def test_a_failing_handler_leaves_as_a_code_and_a_scrubbed_message():
    def failing(msg, context):
        raise ConfigError("profile /sites/a/centre.yaml: key 'dataset' has value 'P-17'")

    reply = _guarded(_incoming(), _context(), failing)
    reason = _reason(reply)
    assert reason.startswith("config: ConfigError: profile <path>")
    assert "/sites" not in reason and "P-17" not in reason and "dataset" not in reason


def test_a_deployed_centre_keeps_its_own_name_and_points_to_its_log():
    def refusing(msg, context):
        raise ConfigError("centre 's3' does not share model weights, so 'P-17 arm' is refused")

    reason = _reason(_guarded(_incoming(), _context(centre="s3"), refusing))
    assert reason == (
        "config: ConfigError: centre 's3' does not share model weights, so '<value>' is refused "
        "(paths and quoted values hidden: the whole message is in s3's log)"
    )

    # a message with nothing to hide is sent whole, without the pointer
    def plain(msg, context):
        raise ConfigError("no training images")

    assert _reason(_guarded(_incoming(), _context(centre="s3"), plain)) == (
        "config: ConfigError: no training images"
    )

    # a long one with nothing to hide is cut, and says so (not "hidden")
    def long(msg, context):
        raise ConfigError("no training images; " + "fix: this or that; " * 30)

    reason = _reason(_guarded(_incoming(), _context(centre="s3"), long))
    assert reason.endswith("... (cut short: the whole message is in s3's log)"), reason
    # a node whose centre is unknown keeps nothing and names no log
    reason = _reason(_guarded(_incoming(), _context(), refusing))
    assert "'s3'" not in reason and "log" not in reason


def test_a_refusal_is_logged_in_one_line_and_a_simulated_centre_keeps_its_name(
    tmp_path, monkeypatch, caplog
):
    # Prepare: a simulated node (partition 1 of a run spec whose nodes are a, s3)
    from fedmammo.errors import FedmammoError
    from fedmammo.federation.runspec import ENV_VAR, RunSpec

    spec = RunSpec(scenario_file="x.yaml", run_dir=str(tmp_path), node_order=["a", "s3"])
    monkeypatch.setenv(ENV_VAR, str(spec.save()))

    def refusing(msg, context):
        raise FedmammoError("centre 's3' refuses the requested work in phase fedavg")

    def crashing(msg, context):
        raise RuntimeError("a bug")

    # Execute
    with caplog.at_level("WARNING", logger="fedmammo.federation.egress"):
        refused = _reason(_guarded(_incoming(), _context(**{"partition-id": 1}), refusing))
        crashed = _reason(_guarded(_incoming(), _context(**{"partition-id": 1}), crashing))
    # Assert: the name stays, no pointer to a site log; a refusal logs no traceback, a bug does
    assert refused == (
        "error: FedmammoError: centre 's3' refuses the requested work in phase fedavg"
    )
    assert crashed == "error: RuntimeError: a bug"
    assert [r.exc_info is not None for r in caplog.records] == [False, True]


def test_an_inner_error_reply_is_scrubbed_too():
    from flwr.app import Error

    def inner(msg, context):
        return Message(Error(code=7, reason="failed on '/data/x.png'"), reply_to=msg)

    reply = _guarded(_incoming(), _context(), inner)
    assert reply.error.code == 7 and "/data" not in reply.error.reason


def test_refusals_are_counted_and_reported_in_later_replies(model_state):
    # Prepare: one refused reply (undeclared key), then an honest one
    ctx = _context()

    def leaky(msg, context):
        declare_egress(context, model_state)
        return Message(
            RecordDict({"arrays": ArrayRecord(dict(model_state, leak=torch.zeros(3)))}),
            reply_to=msg,
        )

    def honest(msg, context):
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=msg)

    # Execute
    first = _guarded(_incoming(), ctx, leaky)
    second = _guarded(_incoming(), ctx, honest)
    # Assert
    assert _reason(first).startswith("egress: EgressError:") and "leak" not in _reason(first)
    assert refusal_count(ctx) == 1
    assert second.content["egress"][REFUSALS_METRIC] == 1
    assert second.content["metrics"]["num-examples"] == 3
    assert list(second.content.keys())[-1] == "egress"  # after the reply's own metrics


def test_a_declaration_never_outlives_its_reply(model_state):
    # A handler that declared and then failed must not leave its declaration to the next one
    ctx = _context()

    def declares_then_fails(msg, context):
        declare_egress(context, model_state)
        raise RuntimeError("boom")

    def sends_weights(msg, context):
        return Message(RecordDict({"arrays": ArrayRecord(model_state)}), reply_to=msg)

    _guarded(_incoming(), ctx, declares_then_fails)
    reply = _guarded(_incoming(), ctx, sends_weights)
    assert "no declared model" in _reason(reply)


def test_a_refusal_keeps_the_servers_own_words_and_hides_the_centres():
    # Prepare: a consent refusal that quotes the message type and a value of the centre's
    # own data, which the server also sent as a config key (a guess)
    from fedmammo.federation.consent import ConsentRefusal
    from fedmammo.federation.messages import MessageError

    def refusing(msg, context):
        raise ConsentRefusal("'train.classifier' refused for patient 'P-17'")

    guess = make_incoming(
        RecordDict({"config": ConfigRecord({"arm": "x", "P-17": 1})}), "train.classifier"
    )
    # Execute
    reason = _reason(_guarded(guess, _context(centre="s3"), refusing))
    # Assert: its own code; the message type stays; the centre's value does not, even though
    # the server sent it as a key (no oracle for guesses)
    assert reason.startswith("consent: ConsentRefusal: 'train.classifier' refused for patient")
    assert "'<value>'" in reason and "P-17" not in reason

    # a message of the wrong form: its keys are the server's words and stay
    def malformed(msg, context):
        raise MessageError("message 'train.classifier': unknown key(s) ['P-17']")

    assert "unknown key(s) ['P-17']" in _reason(_guarded(guess, _context(), malformed))
