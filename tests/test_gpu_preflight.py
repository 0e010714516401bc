"""The GPU command's preflight (scripts/gpu.py, ≤ 150 s, a cold torch.compile included): the fast
path trains on this machine's GPU, or nothing else is worth measuring. On a GPU machine:
`python -m pytest -m gpu tests/test_gpu_preflight.py`; skipped elsewhere.

Tiny runs (ResNet8v1, 512 synthetic images, 8 steps an epoch): the default path (compile + CUDA
graphs, without falling back) for two epochs, a pack of two runs on their streams, a run continued
with CUDA graphs from an eager checkpoint, and a run on an explicitly numbered device (the last
GPU: on a one-GPU machine, cuda:0 named as such). The first is marked `compile`: where
scripts/compile_probe.py found torch.compile unusable, the GPU command runs the others.
"""

import dataclasses
import json

import pytest
import torch
from gpu_runs import all_finite, compiled_frames, drain, tiny_config, train_losses

from runner.sweeps.pack import Job, train_pack

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.mark.compile
def test_the_default_path_captures_once_trains_finite_losses_and_compiles_nothing_after_epoch_1(
    tmp_path,
):
    seen = {}

    def after_step(run):
        # epoch 1 trained and validated: eval forward compiled, captured
        if run.state.step == run.steps_per_epoch:
            graphed = run.trainee.graphed
            seen.update(
                frames=compiled_frames(), graphs=len(graphed.graphs), captures=graphed.captures
            )

    run = drain(
        tiny_config(CUDA, epochs=2, depth=8, bn_recalibrate=256), tmp_path / "default", after_step
    )
    s = json.loads((tmp_path / "default" / "summary.json").read_text())
    # the default path ran: nothing fell back to a safer one
    assert run.trainee.path.compile is True and run.trainee.path.cuda_graphs is True
    assert s["path_fallback"] is None and s["path"]["compile"] and s["path"]["cuda_graphs"]
    assert s["status"] == "completed" and all_finite(train_losses(tmp_path / "default"))
    graphed = run.trainee.graphed
    assert len(graphed.graphs) == seen["graphs"] == 1 and len(graphed.seen) == 1
    assert graphed.captures == seen["captures"] == 2  # the plain step's graph and the log point's
    assert run.trainee.execution.forward.graph is not None
    assert compiled_frames() == seen["frames"]


def test_a_pack_of_two_runs_trains_both_on_their_streams(tmp_path):
    jobs = []
    for n, lr in enumerate((1e-3, 3e-3)):
        cfg = dataclasses.replace(
            tiny_config(CUDA, epochs=1, depth=8, compile=False, bn_recalibrate=0), lr=lr
        )
        (tmp_path / str(n)).mkdir()
        jobs.append(Job(cfg, tmp_path / str(n), name=str(n)))
    outcomes = train_pack(jobs)
    assert [o.error for o in outcomes] == [None, None]
    assert [o.summary["status"] for o in outcomes] == ["completed", "completed"]
    losses = [train_losses(tmp_path / str(n)) for n in range(2)]
    assert all(all_finite(v) for v in losses) and losses[0] != losses[1]


def test_an_eager_checkpoint_continues_with_cuda_graphs(tmp_path):
    """The optimizer's fused/capturable flags are its own after loading, not the checkpoint's."""
    folder = tmp_path / "run"
    eager = dict(epochs=2, depth=8, compile=False, cuda_graphs=False, bn_recalibrate=0)
    # epoch 1, eager; its checkpoint is not capturable
    drain(tiny_config(CUDA, max_steps=8, **eager), folder)
    run = drain(
        tiny_config(CUDA, epochs=2, depth=8, compile=False, cuda_graphs=True, bn_recalibrate=0),
        folder,
    )
    s = json.loads((folder / "summary.json").read_text())
    assert (
        s["status"] == "completed"
        and s["resumed"]["from_step"] == 8
        and len(run.trainee.graphed.graphs) == 1
    )
    assert run.trainee.opt.inner.param_groups[0]["capturable"] is True
    assert all_finite(train_losses(folder))


def test_a_run_on_an_explicit_device_index_trains_there(tmp_path):
    last = torch.cuda.device_count() - 1
    run = drain(
        tiny_config(CUDA, epochs=1, depth=8, compile=False, bn_recalibrate=0),
        tmp_path / "n",
        job_num=last,
    )
    assert run.device == torch.device("cuda", last) and torch.cuda.current_device() == last
    assert all(p.device == run.device for p in run.trainee.model.parameters())
    assert len(run.trainee.graphed.graphs) == 1 and all_finite(train_losses(tmp_path / "n"))
