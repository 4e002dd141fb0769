"""A hostile server and a careless operator against the zero-shot head built from the
operator's class descriptions (issue 24: server/class_descriptions.py, wired in
server/app.py, server/operator.py, cli/shared.py, common/config.py).

(1) The server chooses the model it sends, so it can send any head: the description
head at the largest scale, rows of norm 1000 aimed at one record, rows for classes the
owner does not hold, rows whose logits overflow float32 on one record. Against the
training loop and the real ClientApp, none of them moves one record's clipped
contribution past C (flat, and per layer on the fine-tuned MiniLM top), and none changes
a field of the reply or a refusal outside the DP releases, with the record or without.
(2) The operator's descriptions file and scale: every bad input is refused with a
ConfigError naming the file or key and the fix, or handled correctly.
(3) The run-start audit entry holds only the operator's source, scale, digest and phrases.

Each defect the red team found was fixed; its test now guards the fix.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, RecordDict

from fedshield.client import dp_sgd
from fedshield.client.ledger import PrivacyLedger
from fedshield.client.train import TrainSettings, train_locally
from fedshield.common import wire
from fedshield.common.audit_log import MAX_ENTRY_BYTES
from fedshield.common.config import RunConfig
from fedshield.common.errors import ConfigError, FedshieldError
from fedshield.common.model import ModelSpec, build_model, head_weight
from fedshield.server.class_descriptions import class_descriptions, set_description_head
from tests.support.adjacency import observable
from tests.support.client_app import (
    PLAN,
    client_app,
    evaluate_message,
    owner_context,
    run_train,
)

CPU = torch.device("cpu")
# The hashed model the test plan names (256 projected features).
SPEC = ModelSpec.from_config(PLAN)
FILM = {"0": ["a bad, boring, awful film"], "1": ["a great, wonderful film"]}
# The run-start tests' classes (IMDB's labels 0/1 renamed) and what 'names' makes of them.
REVIEW_CLASSES = ("negative_review", "positive_review")
REVIEW_NAMES = {"negative_review": ["negative review"], "positive_review": ["positive review"]}
# float32's largest finite value is 3.4e38: rows just under it are finite (the owner
# accepts them) and overflow a logit wherever they meet a record's features.
NEAR_FLOAT32_MAX = 3.3e38

_ADD_NOISE = dp_sgd._SecureNoise.add_noise


# --- (1) a hostile server's head against the owner -------------------------------------


def _against(x_t: np.ndarray, label: int, classes: int, scale: float) -> np.ndarray:
    """Rows of norm ``scale`` on the target's features, for every class but its label,
    and against them for its label: the target is misclassified by the widest margin."""
    unit = x_t / np.linalg.norm(x_t)
    rows = np.stack([-unit if c == label else unit for c in range(classes)])
    return (scale * rows).astype(np.float32)


def _description_head(x_t, label) -> np.ndarray:
    model = SPEC.build(2)
    set_description_head(model, SPEC, FILM, 1000.0, CPU)
    return head_weight(model).detach().numpy().copy()


def _absent_class_row(x_t, label) -> np.ndarray:
    """Three classes; the owner holds only 0 and 1; the absent class's row is the target."""
    rows = np.zeros((3, len(x_t)), np.float32)
    rows[2] = 1000.0 * x_t / np.linalg.norm(x_t)
    return rows


def _overflowing(x_t, label) -> np.ndarray:
    """Finite rows (largest entry just under float32's limit) on the target's features,
    against its label: its logits are +-inf in float32."""
    x = x_t.astype(np.float64)
    rows = np.stack([-x if c == label else x for c in range(2)])
    return (rows * (NEAR_FLOAT32_MAX / np.abs(rows).max())).astype(np.float32)


CRAFTED_HEADS = {
    "the description head at the largest scale (1000)": _description_head,
    "rows of norm 1000 on the target, against its label": lambda x, y: _against(x, y, 2, 1e3),
    "an absent class's row of norm 1000 on the target": _absent_class_row,
    "finite rows that overflow the target's logits": _overflowing,
}


def _clipped_sum(monkeypatch, model, inputs, labels, settings) -> torch.Tensor:
    """The sum of the clipped per-record gradients of one full-batch DP step, read just
    before its noise is added (flattened over every trained tensor, in float64)."""
    sums = []

    def keep(self):
        sums.append(torch.cat([p.summed_grad.detach().flatten().double() for p in self.params]))
        _ADD_NOISE(self)

    monkeypatch.setattr(dp_sgd._SecureNoise, "add_noise", keep)
    train_locally(model, inputs, labels, settings, CPU, released_count=1)
    (total,) = sums
    return total


def _linear(weight: np.ndarray) -> torch.nn.Module:
    model = build_model(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weight))
    return model


@pytest.mark.parametrize("head", list(CRAFTED_HEADS))
def test_no_crafted_head_moves_one_records_clipped_contribution_past_c(
    head, imdb_frame, monkeypatch
):
    """D against D minus the target, one full-batch step without noise: the sums of the
    clipped gradients differ by the target's own, at most C, whatever head the server
    aimed at it; where its logits overflow it contributes nothing (counted as zero)."""
    frame = imdb_frame.iloc[:80]
    (x,) = SPEC.encode(frame["text"].tolist(), CPU)
    y = frame["label"].to_numpy().astype(np.int64)
    weight = CRAFTED_HEADS[head](x[0], int(y[0]))
    assert np.isfinite(weight).all()  # what the owner accepts (client/accept.py)
    with torch.no_grad():
        logits = _linear(weight)(torch.from_numpy(x[:1]))[0, :2]
    # The target labelled as the class the head scores lowest: its gradient is largest.
    y[0] = int(torch.nan_to_num(logits, nan=0.0).argmin())
    clip = 0.05
    settings = TrainSettings(
        batch_size=0, learning_rate=1.0, noise_multiplier=0.0, max_grad_norm=clip, model_spec=SPEC
    )
    without = np.arange(len(y)) != 0
    moved = (
        _clipped_sum(monkeypatch, _linear(weight), (x,), y, settings)
        - _clipped_sum(monkeypatch, _linear(weight), (x[without],), y[without], settings)
    ).norm()
    assert moved <= clip * (1 + 1e-4), head
    if head.startswith("finite rows that overflow"):
        assert not torch.isfinite(logits).all()
        assert moved < 1e-6 * clip
    else:
        assert moved > 0.99 * clip  # clipping binds: the attack had its largest gradient


@pytest.fixture(scope="module")
def minilm_top():
    from fedshield.common import minilm

    return minilm.MiniLMTop(finetune_layers=1, num_classes=3)


@pytest.mark.parametrize("scale", [1000.0, 1e30])
def test_a_huge_head_on_the_fine_tuned_minilm_top_keeps_each_record_within_c(
    scale, minilm_top, monkeypatch
):
    """The head's norm multiplies the gradient every encoder layer gets; per-layer clipping
    (MiniLMTop.max_grad_norms, L2 total C) still bounds the target's contribution by C."""
    from fedshield.common import minilm

    generator = torch.Generator().manual_seed(0)
    n = 12
    hidden = torch.randn(n, 8, minilm.HIDDEN, generator=generator)
    mask = torch.ones(n, 8, dtype=torch.int8)
    start = copy.deepcopy(minilm_top)
    with torch.no_grad():
        rows = torch.randn(3, minilm.HIDDEN, generator=generator)
        start.head.weight.copy_(scale * rows / rows.norm(dim=1, keepdim=True))
        labels = (start(hidden, mask).argmin(1)).numpy()  # every record misclassified
    clip = 0.3
    settings = TrainSettings(
        batch_size=0,
        learning_rate=1.0,
        encoder_learning_rate=1.0,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        model_spec=ModelSpec(name="minilm", finetune_layers=1, max_tokens=8),
    )
    without = np.arange(n) != 0
    moved = (
        _clipped_sum(monkeypatch, copy.deepcopy(start), (hidden, mask), labels, settings)
        - _clipped_sum(
            monkeypatch,
            copy.deepcopy(start),
            (hidden[without], mask[without]),
            labels[without],
            settings,
        )
    ).norm()
    assert moved <= clip * (1 + 1e-4)
    assert moved > 0.5 * clip / np.sqrt(2)  # at least the head's clipped half moved


def _train_message(weight: np.ndarray) -> Message:
    classes = ("0", "1", "rare")[: weight.shape[0]]
    config = wire.encode_train_plan(PLAN, classes)
    config[wire.SERVER_ROUND] = 1
    content = RecordDict(
        {wire.ARRAYS: ArrayRecord(_linear(weight).state_dict()), wire.CONFIG: config}
    )
    return Message(content=content, dst_node_id=1, message_type="train")


@pytest.mark.usefixtures("flower_task_identity")
def test_the_reply_is_the_same_outside_the_update_whatever_head_the_server_aimed_at_a_record(
    imdb_frame, tmp_path, fixed_count_release
):
    """The real ClientApp on D and on D minus the target, for every crafted head and a zero
    head: no refusal, no crash, every field outside the DP update identical (given the same
    count release): the head cannot make the reply, or a refusal, answer whether the
    target is there. Evaluate (with consent) on the overflowing head: the same."""
    (x,) = SPEC.encode(imdb_frame["text"].iloc[:1].tolist(), CPU)
    label = int(imdb_frame["label"].iloc[0])
    heads = {"a zero head": np.zeros((2, PLAN.feat_out_dim), np.float32)}
    heads |= {name: make(x[0], label) for name, make in CRAFTED_HEADS.items()}
    datasets = {"D": imdb_frame, "D minus the target": imdb_frame.iloc[1:]}
    seen, updates = {}, {}
    for data_name, frame in datasets.items():
        path = tmp_path / f"{len(frame)}.csv"
        frame.to_csv(path, index=False)
        for number, (head, weight) in enumerate(heads.items()):
            context = owner_context(path, tmp_path / f"{len(frame)}-{number}" / "ledgers")
            context.node_config["desensitise"] = False  # the owner's features are the target's
            reply = run_train(context, _train_message(weight))
            assert not reply.has_error(), (data_name, head, reply.error)
            seen[data_name, head] = observable("train", reply)
            updates[data_name, head] = reply.content[wire.ARRAYS]["weight"].numpy()
        context = owner_context(path, tmp_path / f"{len(frame)}-evaluate" / "ledgers")
        context.node_config |= {"desensitise": False, "allow-evaluate": True}
        overflowing = _linear(heads["finite rows that overflow the target's logits"])
        evaluate = evaluate_message(weights=overflowing)
        reply = client_app()(evaluate, context)
        assert not reply.has_error(), (data_name, reply.error)
        seen[data_name, "evaluate"] = observable("evaluate", reply)
    baseline = seen["D", "a zero head"]
    for key, observed in seen.items():
        assert observed == (seen["D", "evaluate"] if key[1] == "evaluate" else baseline), key
    assert all(np.isfinite(update).all() for update in updates.values())


@pytest.mark.usefixtures("flower_task_identity")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_head_with_a_non_finite_row_is_refused_before_anything_is_charged(
    bad, owner_csv, tmp_path
):
    """What a NaN scale or a NaN description would make: refused on the model alone."""
    weight = _against(np.ones(PLAN.feat_out_dim, np.float32), 0, 2, 30.0)
    weight[1, 0] = bad
    context = owner_context(owner_csv, tmp_path / "ledgers")
    reply = run_train(context, _train_message(weight))
    assert reply.has_error() and reply.error.code == wire.ERROR_BAD_DATA_OR_CONFIG
    assert PrivacyLedger(tmp_path / "ledgers").entries() == []


# --- (2) the operator's descriptions file and scale -------------------------------------

CLASSES = ("grain", "ship")
FIX = r"JSON object mapping each class"


def _file(tmp_path, content: bytes | str, name: str = "descriptions.json") -> str:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"grain": "blé", "ship": "navire"}'.encode("latin-1"), "not UTF-8"),
        (b'\xef\xbb\xbf{"grain": "wheat", "ship": "boats"}', "a byte-order mark"),
        (b"", "empty"),
        (b'{"grain": 3, "ship": "boats"}', "a number for a phrase"),
        (b'{"grain": NaN, "ship": "boats"}', "NaN for a phrase"),
        (b'{"grain": null, "ship": "boats"}', "null for a phrase"),
        (b'{"grain": true, "ship": "boats"}', "a boolean for a phrase"),
        (b'{"grain": {"wheat": "yes"}, "ship": "boats"}', "an object for a phrase"),
        (b'{"grain": [["wheat"]], "ship": "boats"}', "a nested list for a phrase"),
        (b'"grain"', "a string, not an object"),
        (b"{}", "an empty object"),
    ],
)
def test_a_bad_descriptions_file_is_refused_naming_the_file_and_the_fix(tmp_path, content, why):
    source = _file(tmp_path, content)
    with pytest.raises(ConfigError, match=FIX) as refused:
        class_descriptions(source, CLASSES)
    assert source in str(refused.value), why


def test_a_folder_is_refused_naming_it_both_in_the_server_and_on_the_command_line(tmp_path):
    from fedshield.cli.shared import described_classes

    with pytest.raises(ConfigError, match=rf"{tmp_path}.*{FIX}"):
        class_descriptions(str(tmp_path), CLASSES)
    with pytest.raises(FedshieldError, match=r"is a folder; pass the file itself"):
        described_classes(str(tmp_path))


def test_unicode_class_names_are_described_and_a_normalisation_mismatch_is_refused(tmp_path):
    import unicodedata

    names = ("café_crème", "日本-語")
    assert class_descriptions("names", names) == {
        "café_crème": ["café crème"],
        "日本-語": ["日本 語"],
    }
    source = _file(tmp_path, json.dumps({"café": "coffee", "ship": "boats"}, ensure_ascii=False))
    assert class_descriptions(source, ("café", "ship"))["café"] == ["coffee"]
    # The same letters decomposed (NFD) are another class name: refused, not guessed.
    decomposed = unicodedata.normalize("NFD", "café")
    with pytest.raises(
        ConfigError, match=rf"no description for {decomposed}; not a class of this run: café"
    ):
        class_descriptions(source, (decomposed, "ship"))


def test_thousands_of_phrases_and_a_long_phrase_give_the_unit_norm_mean_at_the_scale(tmp_path):
    phrases = [f"grain wheat harvest number{i}" for i in range(2000)]
    long = " ".join(["shipping ports vessels"] * 4_000)  # about 90 KB, one phrase
    source = _file(tmp_path, json.dumps({"grain": phrases, "ship": long}))
    described = class_descriptions(source, CLASSES)
    model = SPEC.build(2)
    set_description_head(model, SPEC, described, 7.5, CPU)
    rows = head_weight(model).detach().numpy()
    (features,) = SPEC.encode([*phrases, long], CPU)
    units = features / np.linalg.norm(features, axis=1, keepdims=True)
    mean = units[:-1].mean(axis=0)
    np.testing.assert_allclose(rows[0], 7.5 * mean / np.linalg.norm(mean), atol=1e-5)
    np.testing.assert_allclose(rows[1], 7.5 * units[-1], atol=1e-5)


@pytest.mark.parametrize(
    ("value", "scale"), [("30", 30.0), ("1e3", 1000.0), (0.5, 0.5), (1000, 1000.0)]
)
def test_a_scale_given_as_text_or_an_int_is_read_as_its_number(value, scale):
    assert RunConfig.from_dict({"class-description-scale": value}).class_description_scale == scale


@pytest.mark.parametrize(
    "value", ["nan", "inf", "-1", "abc", "", True, float("nan"), float("inf"), 0, 1000.0001]
)
def test_a_bad_scale_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"'class-description-scale'"):
        RunConfig.from_dict({"class-description-scale": value})


@pytest.mark.parametrize(
    "item",
    ["class-description-scale=nan", "class-description-scale=-inf", "class-descriptions=3"],
)
def test_a_bad_value_on_the_command_line_run_config_is_refused_naming_the_key(item):
    from fedshield.cli.shared import parse_key_values

    key = item.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        RunConfig.from_dict(parse_key_values([item]))


def test_a_class_described_twice_in_the_file_is_refused_naming_the_class(tmp_path):
    source = _file(tmp_path, '{"grain": "wheat", "ship": "boats", "grain": "rice"}')
    with pytest.raises(ConfigError, match=r"grain"):
        class_descriptions(source, CLASSES)


def test_a_deeply_nested_file_is_refused_naming_the_file(tmp_path):
    source = _file(tmp_path, b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ConfigError, match=r"class-descriptions"):
        class_descriptions(source, CLASSES)


def test_descriptions_too_large_for_the_run_start_entry_are_refused_when_read(tmp_path):
    long = " ".join(["wheat harvest grain"] * 250_000)  # 5 MB
    source = _file(tmp_path, json.dumps({"grain": long, "ship": "boats"}))
    assert len(long) > MAX_ENTRY_BYTES
    with pytest.raises(ConfigError, match=r"class-descriptions"):
        class_descriptions(source, CLASSES)


@pytest.mark.parametrize(
    ("source", "classes", "featureless"),
    [
        ("names", ("0", "1"), "0"),
        ("names", ("_", "grain"), "_"),
        ("names", ("-", "grain"), "-"),
        ("names", ("A", "grain"), "A"),
        ('{"grain": "...", "ship": "boats"}', CLASSES, "grain"),
    ],
)
def test_a_description_without_features_is_refused_naming_the_class(
    tmp_path, source, classes, featureless
):
    if source != "names":
        source = _file(tmp_path, source)
    with pytest.raises(ConfigError, match=rf"class-descriptions.*{featureless}"):
        described = class_descriptions(source, classes)
        set_description_head(SPEC.build(len(classes)), SPEC, described, 30.0, CPU)


@pytest.mark.parametrize(
    ("described", "refusal"),
    [
        ('{"0": "a bad film"}', r"no description for 1"),
        # IMDB's classes are "0" and "1": under ``names`` the hashed words see nothing.
        ("names", r"class '0'.*no features"),
    ],
)
def test_simulate_refuses_bad_descriptions_before_anything_runs(
    tmp_path, monkeypatch, described, refusal
):
    """Refused with the class named before Ray or any owner starts, not in the ServerApp."""
    from fedshield.cli.simulate_run import run_with_progress
    from fedshield.simulation import engine

    def started(*args, **kwargs):
        raise AssertionError("the simulation started before the descriptions were checked")

    monkeypatch.setattr(engine, "run_simulation", started)
    monkeypatch.setattr("fedshield.cli.simulate_run._prepare_owners_first", started)
    config = RunConfig.from_dict(
        {
            "max-records": 200,
            "partition": "iid",
            "desensitise": False,
            "out-dir": str(tmp_path / "run"),
            "class-descriptions": described if described == "names" else _file(tmp_path, described),
        }
    )
    with pytest.raises(ConfigError, match=refusal):
        run_with_progress(config, 2)


# --- (3) the run-start audit entry -------------------------------------------------------


class _RunStarted(Exception):
    """Raised once run_federation has written its run-start entry (the test stops there)."""


@pytest.fixture()
def run_start(tmp_path, monkeypatch, imdb_frame):
    """run_federation up to its run-start entry, on the operator's data alone (no grid,
    no owner): returns that entry's data."""
    from fedshield.common.audit_log import AuditLog
    from fedshield.server import app as server_app

    class StopAtRunStart(AuditLog):
        def append(self, event_type, **data):
            entry = super().append(event_type, **data)
            if event_type == "run-start":
                raise _RunStarted(entry)
            return entry

    monkeypatch.setattr(server_app, "AuditLog", StopAtRunStart)
    data = tmp_path / "reviews.csv"
    imdb_frame.iloc[:300].assign(label=lambda f: [REVIEW_CLASSES[i] for i in f["label"]]).to_csv(
        data, index=False
    )

    def start(**values) -> dict:
        config = RunConfig.from_dict(
            {
                "data": str(data),
                "partition": "iid",
                "desensitise": False,
                "out-dir": str(tmp_path / "run"),
                **values,
            }
        )
        with pytest.raises(_RunStarted) as started:
            server_app.run_federation(object(), config)
        assert started.value.args[0]["data"]["classes"] == list(REVIEW_CLASSES)
        return started.value.args[0]["data"]

    return start


def test_the_run_start_entry_holds_only_the_operators_source_scale_digest_and_phrases(
    run_start, tmp_path
):
    written = {"negative_review": "a bad film", "positive_review": ["a great film", "fine acting"]}
    source = _file(tmp_path, json.dumps(written))
    entry = run_start(**{"class-descriptions": source, "class-description-scale": 12.5})
    assert entry["class-descriptions"] == {
        "from": source,
        "sha256": hashlib.sha256((tmp_path / "descriptions.json").read_bytes()).hexdigest(),
        "scale": 12.5,
        "descriptions": {
            "negative_review": ["a bad film"],
            "positive_review": ["a great film", "fine acting"],
        },
    }
    named = run_start(**{"class-descriptions": "names"})["class-descriptions"]
    assert named == {"from": "names", "sha256": None, "scale": 30.0, "descriptions": REVIEW_NAMES}
    assert run_start()["class-descriptions"] is None


def test_the_published_digest_is_that_of_the_bytes_that_made_the_head(
    run_start, tmp_path, monkeypatch
):
    from fedshield.server import app as server_app

    written = {"negative_review": "a bad film", "positive_review": "a great film"}
    source = _file(tmp_path, json.dumps(written))
    read = (tmp_path / "descriptions.json").read_bytes()
    build = server_app.set_description_head

    def build_then_edit(*args, **kwargs):
        build(*args, **kwargs)
        edited = {"negative_review": "awful", "positive_review": "superb"}
        (tmp_path / "descriptions.json").write_text(json.dumps(edited))

    monkeypatch.setattr(server_app, "set_description_head", build_then_edit)
    entry = run_start(**{"class-descriptions": source})["class-descriptions"]
    assert entry["descriptions"] == {k: [v] for k, v in written.items()}
    assert entry["sha256"] == hashlib.sha256(read).hexdigest()
