"""The maths, with no files, clocks or terminals: the update rule, the schedule, what step k
applies, the models, the data and its on-device loader, and evaluation."""
