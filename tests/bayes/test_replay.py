"""draw_kind and over_members ask the one definition of an ensemble (bayes.members) and name
what a guide lacks for their use."""

import contextlib

import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_otmdr import AutoDeltaEnsemble
from pyro_otmdr.bayes import bayesian
from pyro_otmdr.bayes.members import is_ensemble, over_members
from pyro_otmdr.bayes.replay import draw_kind


class _MembersOnly:
    """An ensemble by the definition (num_members, member) that cannot give its values."""

    num_members = 2

    @contextlib.contextmanager
    def member(self, index):
        yield


def _model():
    return bayesian(torch.nn.Linear(4, 3), num_data=8)


def test_draw_kind_of_each_guide_family():
    model = _model()
    assert draw_kind(AutoDelta(model), 16) == ("delta", 1)
    assert draw_kind(AutoDeltaEnsemble(model, num_members=3), 16) == ("ensemble", 3)
    assert draw_kind(AutoNormal(model), 16) == ("sample", 16)


def test_an_ensemble_that_cannot_give_its_members_values_is_refused():
    assert is_ensemble(_MembersOnly())
    with pytest.raises(ValueError, match="member_values"):
        draw_kind(_MembersOnly(), 16)


def test_a_num_members_alone_or_a_bool_is_not_an_ensemble():
    class Flagged:
        num_members = True

        def member(self, index):  # pragma: no cover - never entered
            raise AssertionError

    class Counted:
        num_members = 3

    assert not is_ensemble(Flagged()) and not is_ensemble(Counted())
    assert draw_kind(Counted(), 4) == ("sample", 4)


def test_an_ensemble_that_only_gives_values_is_drawn_but_not_trained():
    class ValuesOnly:
        num_members = 2

        def member_values(self, index, *args):
            return {}

    assert draw_kind(ValuesOnly(), 16) == ("ensemble", 2)
    with pytest.raises(ValueError, match=r"member\(index\)"):
        over_members(ValuesOnly(), lambda: 0.0)


# ------------------------------------------------------------------ observed sites


def test_observed_likelihood_unwraps_masks_and_events_but_not_transforms():
    import pyro.distributions as dist

    from pyro_otmdr.bayes.replay import observed_likelihood

    normal = dist.Normal(torch.zeros(4, 1), 1.0)
    assert observed_likelihood(normal.to_event(1).mask(True), "obs") == "normal"
    assert observed_likelihood(dist.StudentT(3.0, 0.0, 1.0).expand([4]), "obs") == "studentt"
    assert observed_likelihood(dist.Categorical(logits=torch.zeros(4, 3)), "obs") == "categorical"
    for other in (dist.LogNormal(0.0, 1.0), dist.Poisson(torch.ones(4))):
        with pytest.raises(ValueError, match=r"Categorical .* or a Normal or StudentT"):
            observed_likelihood(other, "obs")


def test_site_regression_gives_one_distribution_per_example():
    import pyro
    import pyro.distributions as dist

    from pyro_otmdr.bayes.replay import site_regression

    def model(x, y=None):
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.StudentT(5.0, x.sum(-1, keepdim=True), 2.0).to_event(1),
                        obs=y)  # fmt: skip

    x = torch.randn(6, 3)
    likelihood, loc, scale, df = site_regression(model, {}, x, "obs")
    assert likelihood == "studentt" and loc.shape == scale.shape == df.shape == (6,)
    assert torch.equal(loc, x.sum(-1)) and bool((scale == 2.0).all()) and bool((df == 5).all())
    with pytest.raises(ValueError, match="a classifier"):
        site_regression(_model(), {}, torch.randn(2, 4), "obs")
