"""OT-MDR under PyTorch Lightning: an AutoNormal Bayesian MLP on digits.

This follows Pyro's own Lightning example (``examples/svi_lightning.py``): with
``pyro.settings.set(module_local_params=True)``, ``Trace_ELBO()(model, guide)`` is an
``ELBOModule`` whose parameters an ordinary torch optimiser trains. A sharpness-aware step runs
several forward/backward passes on parts of the batch, so the LightningModule uses *manual*
optimisation: ``opt.compute_gradients(loss_fn, *batch)`` runs the OT-MDR passes and leaves the
descent gradient, then ``opt.step()`` lets Lightning count the step and the base optimiser apply
it. The LR scheduler is attached to the OT-MDR optimiser (Lightning requires that) and, sharing
``param_groups``, drives the base optimiser.

Usage::

    pip install lightning
    python examples/lightning_bnn.py --epochs 20
"""

import argparse

import lightning as L
import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value
from torch.utils.data import DataLoader

from pyro_otmdr.bayes.bnn import bayesian
from pyro_otmdr.evaluation import evaluate
from pyro_otmdr.model_space.optim import OTMDROptimizer
from pyro_otmdr.workflow.data import load_dataset
from pyro_otmdr.workflow.models import Normalize, build_model


class OTMDRModule(L.LightningModule):
    """Train an ``ELBOModule`` with OT-MDR steps under Lightning's manual optimisation.

    Usage::

        trainer.fit(OTMDRModule(Trace_ELBO()(model, guide), lr=1e-2, rho=0.005), loader)
    """

    def __init__(self, loss_fn: pyro.infer.elbo.ELBOModule, *, lr: float, rho: float,
                 particles: int = 2, epochs: int = 20, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.automatic_optimization = False  # a step runs several passes: manual optimisation
        self.loss_fn = loss_fn
        self.lr, self.rho, self.particles, self.epochs, self.seed = lr, rho, particles, epochs, seed

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        if len(batch[0]) < 2:
            return  # a step needs two non-empty halves
        loss = opt.compute_gradients(self.loss_fn, *batch)
        opt.step()
        self.log("train_loss", loss / len(batch[0]), prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()

    def configure_optimizers(self):
        base = torch.optim.Adam(self.loss_fn.parameters(), lr=self.lr)
        opt = OTMDROptimizer(
            self.loss_fn.named_parameters(),
            base,
            rho=self.rho,
            n_particles=self.particles,
            seed=self.seed,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        return [opt], [scheduler]


def build(x: torch.Tensor, y: torch.Tensor, seed: int, normalization: tuple):
    """The Bayesian MLP, its AutoNormal guide and the ELBO as a module."""
    pyro.set_rng_seed(seed)
    net = build_model("mlp", num_classes=10, in_features=64, hidden=(128,))
    normalize = Normalize(*normalization)  # the data stay in [0, 1]
    model = bayesian(net, num_data=len(x), prior_scale=1.0, input_transform=normalize)
    guide = AutoNormal(
        model, init_loc_fn=init_to_value(values=model.initial_values()), init_scale=1e-3
    )
    loss_fn = Trace_ELBO()(model, guide)
    loss_fn(x[:2], y[:2])  # the guide builds its parameters before the optimiser sees them
    return model, guide, loss_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--rho", type=float, default=0.005)
    parser.add_argument("--particles", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pyro.settings.set(module_local_params=True)
    splits = load_dataset("digits", seed=args.seed)
    x, y = splits.train.tensors
    model, guide, loss_fn = build(x, y, args.seed, splits.normalization)
    loader = DataLoader(
        splits.train, batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )  # fmt: skip
    module = OTMDRModule(loss_fn, lr=args.lr, rho=args.rho, particles=args.particles,
                         epochs=args.epochs, seed=args.seed)  # fmt: skip
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    model.eval()
    metrics = evaluate(model, guide, *splits.test.tensors, num_samples=32).metrics
    print(f"Lightning OT-MDR (rho={args.rho}, K={args.particles}), {args.epochs} epochs, "
          f"{trainer.global_step} steps: test accuracy {metrics['accuracy']:.4f}  "
          f"NLL {metrics['nll']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
