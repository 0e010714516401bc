"""The runner's joblib launcher `hydra/launcher=local_parallel` (joblib_launcher.
SupervisedJoblibLauncher, configured by configs/hydra/launcher/local_parallel.yaml): Hydra's joblib
launcher with the sweep's workers under its supervision.
"""
