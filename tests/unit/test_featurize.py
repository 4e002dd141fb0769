"""The feature map is a pure function of its spec: nothing is fitted on anyone's text."""

from __future__ import annotations

import numpy as np

from fedshield.common.featurize import FeaturizerSpec, featurize, projection_digest

SPEC = FeaturizerSpec(n_buckets=2**12, out_dim=64)


def test_a_text_maps_to_the_same_vector_whatever_else_is_in_the_batch():
    # If anything were fitted on the batch (a vocabulary, IDF, scaling), the row for the
    # first text would change with its neighbours.
    alone = featurize(["the plot was thin but the acting superb"], SPEC)
    with_others = featurize(
        ["the plot was thin but the acting superb", "zebra quantum xylophone", "a"], SPEC
    )
    np.testing.assert_array_equal(alone[0], with_others[0])


def test_rows_are_unit_norm_and_float32():
    x = featurize(["good", "bad movie", "an utterly forgettable evening at the cinema"], SPEC)
    assert x.dtype == np.float32 and x.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)


def test_the_projection_is_fixed_by_the_seed():
    assert projection_digest(SPEC) == projection_digest(FeaturizerSpec(n_buckets=2**12, out_dim=64))
    assert projection_digest(SPEC) != projection_digest(
        FeaturizerSpec(n_buckets=2**12, out_dim=64, seed=1)
    )


def test_spec_round_trips_through_run_config_keys():
    assert FeaturizerSpec.from_config({**SPEC.as_config(), "other-key": 1}) == SPEC
