"""The federation's published class priors (server/class_priors.py) and their setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedshield.common.config import RunConfig
from fedshield.common.errors import ConfigError
from fedshield.common.minilm import MiniLMTop
from fedshield.common.model import build_model, head_bias
from fedshield.server.class_priors import published_priors, set_prior_bias

CLASSES = ("a", "b", "c")


def test_eval_priors_are_the_evaluation_shares_add_one_smoothed():
    labels = np.array([0] * 7 + [1] * 2)  # class c absent from the evaluation data
    priors = published_priors("eval", labels, CLASSES)
    np.testing.assert_allclose(priors, np.array([8, 3, 1]) / 12)


def test_uniform_and_written_priors():
    np.testing.assert_allclose(published_priors("uniform", np.array([0]), CLASSES), [1 / 3] * 3)
    np.testing.assert_allclose(published_priors("2,1,1", np.array([0]), CLASSES), [0.5, 0.25, 0.25])


def test_written_priors_must_name_every_class():
    with pytest.raises(ConfigError, match=r"give 3 shares, one per class \(a, b, c\)"):
        published_priors("0.5,0.5", np.array([0]), CLASSES)


@pytest.mark.parametrize("text", ["", "evaluation", "0.5,-1", "nan,1", "1;2", "1,,2"])
def test_a_malformed_setting_is_refused_when_the_config_is_read(text):
    with pytest.raises(ConfigError, match="class-priors.*'eval'"):
        RunConfig.from_dict({"class-priors": text})


@pytest.mark.parametrize("text", ["0,1,1", "1e-9,1,1", "1e999,1,1"])
def test_a_zero_or_extreme_share_is_refused(text):
    with pytest.raises(ConfigError, match="one positive share per class"):
        published_priors(text, np.array([0]), CLASSES)


def test_written_shares_are_checked_against_the_class_list_when_the_config_is_read():
    with pytest.raises(ConfigError, match="give 2 shares"):
        RunConfig.from_dict({"classes": "neg,pos", "class-priors": "1,1,1"})
    assert RunConfig.from_dict({"classes": "neg,pos", "class-priors": "1E-3, 2"})


def test_the_bias_is_the_log_of_the_priors_in_both_heads():
    priors = np.array([0.7, 0.2, 0.1])
    for model in (build_model(8, 3), MiniLMTop(1, 3)):
        set_prior_bias(model, priors)
        torch.testing.assert_close(head_bias(model), torch.log(torch.tensor(priors)).float())
