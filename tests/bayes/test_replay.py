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
