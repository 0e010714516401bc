"""Many runs: Hydra's callbacks around each job, and packs of jobs trained together in one
process."""
