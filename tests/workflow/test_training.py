"""The epoch loops: batches, skipped tiny batches, the per-epoch scheduler step, step timing."""

import pytest
import torch

from pyro_otmdr.workflow.training import EpochStats, fit, shuffled_batches, train


class FakeSVI:
    """Records the batches it is stepped with; the loss is the batch's first value."""

    def __init__(self):
        self.batches = []

    def step(self, x, y):
        self.batches.append((x.clone(), y.clone()))
        return float(x[0])


class CountingScheduler:
    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1


def test_shuffled_batches_cover_every_example_once_and_follow_the_seed():
    x, y = torch.arange(10.0), torch.arange(10)
    batches = list(shuffled_batches(x, y, batch_size=4, seed=3))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))
    assert all(torch.equal(b[0].long(), b[1]) for b in batches)  # rows stay together
    again = list(shuffled_batches(x, y, batch_size=4, seed=3))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))
    with pytest.raises(ValueError, match="same length"):
        next(shuffled_batches(x, y[:5], batch_size=4))


def test_train_skips_batches_too_small_to_halve_and_steps_the_scheduler_per_epoch():
    svi, scheduler = FakeSVI(), CountingScheduler()
    x, y = torch.arange(9.0), torch.arange(9)
    seen = []
    stats = train(
        svi,
        lambda epoch: shuffled_batches(x, y, batch_size=4, seed=epoch),
        epochs=3,
        scheduler=scheduler,
        on_epoch=seen.append,
    )
    assert scheduler.steps == 3 and seen == stats
    assert [s.steps for s in stats] == [2, 2, 2]  # the batch of 1 is skipped
    assert all(len(b[0]) == 4 for b in svi.batches)
    assert stats[0].timed_steps == 1 and stats[1].timed_steps == 2  # first step not timed
    assert all(isinstance(s, EpochStats) and s.step_ms >= 0 for s in stats)
    assert stats[0].loss == pytest.approx(sum(float(b[0][0]) for b in svi.batches[:2]) / 2)


def test_train_refuses_an_epoch_without_a_usable_batch():
    with pytest.raises(ValueError, match="at least 2 examples"):
        train(FakeSVI(), lambda epoch: [(torch.zeros(1), torch.zeros(1))], epochs=1)
    with pytest.raises(ValueError, match="epochs >= 1"):
        train(FakeSVI(), lambda epoch: [], epochs=0)


def test_fit_keeps_its_interface():
    svi = FakeSVI()
    calls = []
    losses = fit(svi, torch.arange(6.0), torch.arange(6), epochs=2, batch_size=3, seed=0,
                 on_epoch=lambda epoch, loss: calls.append((epoch, loss)))  # fmt: skip
    assert len(losses) == 2 and [c[0] for c in calls] == [0, 1]
    assert [c[1] for c in calls] == losses and len(svi.batches) == 4
    with pytest.raises(ValueError, match="batch_size >= 2"):
        fit(svi, torch.arange(6.0), epochs=1, batch_size=1)


def test_the_progress_bar_shows_steps_and_loss_on_request_and_is_off_in_logs(capsys):
    x, y = torch.arange(8.0), torch.arange(8)
    batches = lambda epoch: list(shuffled_batches(x, y, batch_size=4, seed=epoch))  # noqa: E731
    train(FakeSVI(), batches, epochs=1, progress=True)
    shown = capsys.readouterr().err
    assert "epoch 0" in shown and "0/2" in shown and "loss=2" in shown
    train(FakeSVI(), batches, epochs=1)  # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
