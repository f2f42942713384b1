"""The library pieces of a training workflow, for users to import: data, models, loop, files.

* :mod:`.data`: digits (embedded), CIFAR-10/100 and FakeData loaders (:func:`~.data.load_dataset`);
* :mod:`.models`: the paper's model families by name (:func:`~.models.build_model`);
* :mod:`.training`: the epoch loop over an ``SVI`` (:func:`~.training.train`, ``fit``);
* :mod:`.checkpoint`: atomic, verified checkpoints that resume a run exactly;
* :mod:`.outputs`: atomic, verified output files.

It stands on the evaluation layer and below; the tooling (:mod:`pyro_otmdr.experiments`:
configurations and the ``otmdr`` command) stands on it.

Usage::

    from pyro_otmdr.workflow.data import load_dataset
    from pyro_otmdr.workflow.models import build_model
    from pyro_otmdr.workflow.training import fit

    splits = load_dataset("digits")
"""
