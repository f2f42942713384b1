"""The library pieces of a training workflow, for users to import: data, models, loop, files.

* :mod:`.data`: digits (embedded), CIFAR-10/100 and FakeData loaders (:func:`~.data.load_dataset`);
* :mod:`.models`: the paper's model families by name (:func:`~.models.build_model`);
* :mod:`.training`: the epoch loop over an ``SVI`` (:func:`~.training.train`, ``fit``);
* :mod:`.checkpoint`: atomic, verified checkpoints that resume a run exactly;
* :mod:`.outputs`: atomic, verified output files.

It stands on the evaluation layer and below; the tooling (:mod:`pyro_otmdr.experiments`:
configurations and the ``otmdr`` command) stands on it.

Usage::

    import pyro
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.workflow.data import load_dataset
    from pyro_otmdr.workflow.models import build_model
    from pyro_otmdr.workflow.training import fit

    splits = load_dataset("digits")
    x_train, y_train = splits.train.tensors
    net = build_model("mlp", splits.num_classes, in_features=64, hidden=(32,))
    model = bayesian(net, num_data=len(x_train))
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = fit(svi, x_train, y_train, epochs=1, batch_size=256)   # one mean loss per epoch
"""
