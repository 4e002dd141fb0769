"""The zero-shot head from the operator's class descriptions (server/class_descriptions.py)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from fedshield.common.config import RunConfig
from fedshield.common.errors import ConfigError
from fedshield.common.featurize import featurize
from fedshield.common.model import ModelSpec, head_weight
from fedshield.server.class_descriptions import (
    class_descriptions,
    read_class_descriptions,
    set_description_head,
)

CLASSES = ("grain", "money-fx", "card_arrival")
CPU = torch.device("cpu")


def written(tmp_path, mapping) -> str:
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(mapping), encoding="utf-8")
    return str(path)


def test_names_describe_each_class_with_separators_read_as_spaces():
    assert class_descriptions("names", CLASSES) == {
        "grain": ["grain"],
        "money-fx": ["money fx"],
        "card_arrival": ["card arrival"],
    }
    assert class_descriptions("", CLASSES) is None


def test_a_file_is_read_in_class_order_and_its_digest_is_the_files(tmp_path):
    source = written(
        tmp_path, {"card_arrival": " when my card comes ", "grain": "wheat", "money-fx": "fx"}
    )
    phrases, digest = read_class_descriptions(source, CLASSES)
    assert list(phrases.items()) == [
        ("grain", ["wheat"]),
        ("money-fx", ["fx"]),
        ("card_arrival", ["when my card comes"]),
    ]
    assert digest == hashlib.sha256((tmp_path / "descriptions.json").read_bytes()).hexdigest()
    assert read_class_descriptions("names", CLASSES)[1] is None


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (
            {"grain": "wheat", "money-fx": "fx"},
            r"no description for card_arrival.*Describe exactly",
        ),
        (
            {"grain": "wheat", "money-fx": "fx", "card_arrival": "c", "ship": "boats"},
            r"not a class of this run: ship",
        ),
        (
            {"grain": "wheat", "money-fx": "", "card_arrival": "c"},
            r"does not give non-empty phrases for each class",
        ),
        (["grain", "wheat"], r"does not give non-empty phrases for each class"),
        ({"grain": [], "money-fx": "fx", "card_arrival": "c"}, r"does not give non-empty"),
        ({"grain": ["wheat", " "], "money-fx": "fx", "card_arrival": "c"}, r"non-empty phrases"),
        ({"grain": ["wheat", 3], "money-fx": "fx", "card_arrival": "c"}, r"non-empty phrases"),
    ],
)
def test_a_file_that_does_not_describe_exactly_the_classes_is_refused_with_the_fix(
    tmp_path, mapping, message
):
    with pytest.raises(ConfigError, match=message):
        class_descriptions(written(tmp_path, mapping), CLASSES)


def test_a_missing_or_unreadable_file_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"no file .*or use 'names'"):
        class_descriptions(str(tmp_path / "absent.json"), CLASSES)
    bad = tmp_path / "bad.json"
    bad.write_text("{grain: wheat", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot read .*JSON object"):
        class_descriptions(str(bad), CLASSES)


def test_the_head_is_scale_times_the_unit_norm_features_and_classifies_by_description():
    spec = ModelSpec()
    descriptions = {
        "grain": ["wheat corn harvest grain exports"],
        "money-fx": ["dollar yen currency exchange rate"],
        "card_arrival": ["when will my new card arrive in the post"],
    }
    model = spec.build(len(CLASSES))
    set_description_head(model, spec, descriptions, 30.0, CPU)
    rows = head_weight(model).detach().numpy()
    np.testing.assert_allclose(
        rows, 30.0 * featurize([p for (p,) in descriptions.values()]), atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 30.0, rtol=1e-5)
    texts = [
        "the wheat harvest was poor and grain exports fell",
        "the yen rose against the dollar on the exchange",
        "my card did not arrive, when will it come",
    ]
    with torch.no_grad():
        predicted = model(torch.from_numpy(featurize(texts))).argmax(1).tolist()
    assert predicted == [0, 1, 2]


def test_the_settings_are_checked_before_a_run_starts():
    with pytest.raises(ConfigError, match=r"class-description-scale.*\(0, 1000\]"):
        RunConfig.from_dict({"class-description-scale": 0.0})
    with pytest.raises(
        ConfigError, match=r"class-descriptions.*drop class-descriptions or continue-from"
    ):
        RunConfig.from_dict({"class-descriptions": "names", "continue-from": "/some/run"})
    assert RunConfig.from_dict({"class-descriptions": "names"}).class_description_scale == 30.0


@pytest.mark.parametrize("finetune_layers", [0, 1])
def test_on_minilm_the_head_is_the_sentence_embedding_of_each_description(finetune_layers):
    """The frozen head reads the sentence embedding; the fine-tuned top starts as the
    pretrained layers, so its pooled output is that same embedding and the same rows
    make it the same zero-shot classifier before any owner trains."""
    from fedshield.common.minilm import encode_frozen

    spec = ModelSpec(name="minilm", finetune_layers=finetune_layers, max_tokens=32)
    descriptions = {"grain": ["grain and wheat harvests"], "money-fx": ["currency exchange rates"]}
    model = spec.build(2)
    set_description_head(model, spec, descriptions, 30.0, CPU)
    embedded = encode_frozen([p for (p,) in descriptions.values()], 0, 32, CPU)[0]
    np.testing.assert_allclose(head_weight(model).detach().numpy(), 30.0 * embedded, atol=1e-4)
    texts = ["wheat exports fell after a poor harvest", "the dollar fell against the yen"]
    with torch.no_grad():
        logits = model(*(torch.from_numpy(part) for part in spec.encode(texts, CPU)))
    assert logits.argmax(1).tolist() == [0, 1]


def test_a_class_described_by_several_phrases_gets_the_unit_norm_mean_of_their_features(tmp_path):
    spec = ModelSpec()
    source = written(
        tmp_path,
        {
            "grain": ["wheat harvest", "corn exports"],
            "money-fx": "yen dollar",
            "card_arrival": "card",
        },
    )
    descriptions = class_descriptions(source, CLASSES)
    model = spec.build(len(CLASSES))
    set_description_head(model, spec, descriptions, 10.0, CPU)
    mean = featurize(["wheat harvest", "corn exports"]).mean(axis=0)
    np.testing.assert_allclose(
        head_weight(model).detach().numpy()[0], 10.0 * mean / np.linalg.norm(mean), atol=1e-5
    )


def test_a_run_that_loses_a_class_says_so_and_names_the_fix(tmp_path, capsys):
    from fedshield.cli.shared import print_final

    final = {
        "accuracy": 0.93,
        "rounds_completed": 20,
        "epsilon_max": 2.999,
        "dp": True,
        "macro_f1": 0.69,
        "worst_class_recall": 0.0,
        "never_predicted": ["grain"],
        "initial_accuracy": 0.52,
    }
    (tmp_path / "metrics.json").write_text(json.dumps({"final": final, "run": {}}))
    print_final(tmp_path)
    said = " ".join(capsys.readouterr().out.split())
    assert "never predicts grain" in said and "--class-descriptions FILE" in said
