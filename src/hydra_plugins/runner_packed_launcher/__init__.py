"""The runner's Hydra launcher `hydra/launcher=packed` (packed_launcher.PackedLauncher, configured
by configs/hydra/launcher/packed.yaml).

Hydra instantiates launchers only from the `hydra_plugins` namespace package, so the launcher lives
here and the training it drives in runner.sweeps.pack.
"""
