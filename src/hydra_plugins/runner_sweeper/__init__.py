"""The runner's default Hydra sweeper (validating_sweeper.ValidatingSweeper,
configs/hydra/sweeper/validating.yaml).

Hydra instantiates sweepers only from the `hydra_plugins` namespace package, so it lives here.
"""
