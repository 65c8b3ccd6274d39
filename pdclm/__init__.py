"""PD-CLM: the Pattern-Driven Cognitive Language Model and its three-phase training.

The package is layered; a module imports only its own folder and the layers below it, and
imports of the package sit at the top of a module (only ``cli.py`` imports inside functions,
for start-up time). Bottom to top:

    base        vocab, config (these two import nothing from pdclm), io, dist, layers
    data/ pse/  byte shards, tasks, episodes | entropy model, patcher, patch encoder
    memory/     the memory tiers, the store, phases
    model/      the one model forward (with or without memory), generation, model folders
    cognition/  CCM, reflection network, rewards, self-play (no training code)
    eval/       measures: tasks, reflection, robustness, noise, human agreement, claims, report
    train/      the loop, checkpoints, parallel wrapping, objectives, the phases
    pipeline    ``pdclm run``: the phases in order
    bench/      experiments that train models, and the baselines they train
    cli         the ``pdclm`` command

``tests/test_layers.py`` enforces it.
"""
