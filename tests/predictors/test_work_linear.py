"""The work-linear latency model: features, closed-form fit, its additive-predictor form."""

import numpy as np
import pytest

from ofa_jax import space
from predictors import checkpoint
from predictors import features
from predictors import work_linear


def _archs(n, seed=0, resolutions=(128, 160)):
    rng = np.random.default_rng(seed)
    return space.stack([space.sample_np(rng, resolutions=resolutions) for _ in range(n)])


def test_features_grow_with_the_work():
    small, large = space.smallest(128), space.largest(160)
    x = work_linear.work_features(space.stack([small, large]), batch=1, width=1.2)
    assert x.shape == (2, len(work_linear.FEATURE_NAMES))
    np.testing.assert_array_equal(x[:, -1], 1.0)
    assert np.all(x[1, :-1] > x[0, :-1])
    # FLOPs and bytes scale with the batch (launches do not; weights are read once).
    x8 = work_linear.work_features(space.stack([small]), batch=8, width=1.2)
    np.testing.assert_allclose(x8[0, :2], 8 * x[0, :2], rtol=1e-9)
    assert x8[0, 5] == x[0, 5]


def test_fit_recovers_a_linear_device():
    archs = _archs(40)
    x = work_linear.work_features(archs, batch=4, width=1.2)
    coef = np.array([2.0, 30.0, 0.5, 1.5, 3.0, 1.0, 0.2])
    model = work_linear.fit(archs, x @ coef, batch=4, width=1.2, ridge=0.0)
    np.testing.assert_allclose(model(archs), x @ coef, rtol=1e-6)
    assert model.rows == 40
    # A few rows with a ridge: still close on other archs of the same device.
    few = work_linear.fit(archs[:12], (x @ coef)[:12], batch=4, width=1.2)
    other = _archs(20, seed=1)
    truth = work_linear.work_features(other, batch=4, width=1.2) @ coef
    assert np.median(np.abs(few(other) / truth - 1)) < 0.05


def test_as_additive_predictor_matches_and_saves(tmp_path):
    archs = _archs(30, resolutions=(128, 160))
    y = 3.0 + work_linear.work_features(archs, 1, 1.2) @ np.array([1.0, 20.0, .3, .4, .6, 2, 0])
    model = work_linear.fit(archs, y, batch=1, width=1.2)
    fspec = features.fit_feature_spec(archs, width=1.2)  # knots: the two resolutions
    assert fspec.knots == (128, 160)
    pred = work_linear.to_predictor(model, fspec)
    np.testing.assert_allclose(np.asarray(pred(archs)), model(archs), rtol=1e-5)
    loaded = checkpoint.load(checkpoint.save(pred, tmp_path / 'ckpt'))
    np.testing.assert_allclose(np.asarray(loaded(archs)), model(archs), rtol=1e-5)
    back = work_linear.from_dict(loaded.meta['work_linear'])
    assert back == model


@pytest.mark.parametrize('kwargs, field', [
    ({
        'latency_ms': []
    }, 'latency_ms'),
    ({
        'latency_ms': [1.0, 2.0]
    }, 'latency_ms'),
    ({
        'latency_ms': [1.0, -2.0, 3.0]
    }, 'latency_ms'),
    ({
        'latency_ms': [1.0, np.nan, 3.0]
    }, 'latency_ms'),
    ({
        'ridge': -1.0
    }, 'ridge'),
    ({
        'batch': 0
    }, 'batch'),
])
def test_bad_inputs_name_the_field(kwargs, field):
    archs = _archs(3)
    args = dict(latency_ms=[1.0, 2.0, 3.0], batch=1, width=1.2)
    args.update(kwargs)
    n = len(args['latency_ms'])
    with pytest.raises(ValueError, match=field):
        work_linear.fit(archs if n else archs[:0], **args)


def test_width_mismatch_is_refused():
    archs = _archs(10)
    model = work_linear.fit(archs, np.linspace(5, 9, 10), batch=1, width=1.2)
    with pytest.raises(ValueError, match='fspec.width'):
        work_linear.to_predictor(model, features.fit_feature_spec(archs, width=1.0))
    with pytest.raises(ValueError, match='coef'):
        work_linear.from_dict({'coef': {'one': 1.0}, 'batch': 1, 'width': 1.2})
