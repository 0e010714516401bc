"""scripts/bench_ops.py counts what one runner step and one tutorial step ask the device to do
(--quick, CPU, without hydra or the installed package), and how it attributes CUDA launches."""

from types import SimpleNamespace

import pytest
from bench_runs import assert_ran_bare, run_bare

from scripts import bench_ops


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return run_bare("bench_ops", tmp_path_factory.mktemp("bench_ops"))


def test_op_counts_compare_the_runner_step_with_the_tutorial_step(quick):
    res, _ = quick
    assert_ran_bare(res)
    c = res["op_counts"]
    # a ResNet step is hundreds of kernels
    assert c["runner_per_step"] > 100 and c["tutorial_per_step"] > 100
    # CUDA's settings
    assert c["execution"]["precision"] == "bf16" and c["execution"]["channels_last"] is True
    assert c["optimizer"] == "fused Adam"
    assert any(k.startswith("aten::index") for k in c["runner_only"])  # DeviceLoader's gathers
    assert any(k.startswith("aten::_local_scalar_dense") for k in c["tutorial_only"])  # loss.item()
    assert c["log_step_extra"] > 0  # the flush: weight norms and one transfer
    total = sum(c["runner"].values()) - sum(c["tutorial"].values())
    assert total == pytest.approx(sum(c["runner_only"].values()) - sum(c["tutorial_only"].values()))


def test_summary_holds_the_flat_figures(quick):
    res, _ = quick
    ops = res["summary"]["ops_per_step"]
    assert ops["runner"] == res["op_counts"]["runner_per_step"]
    assert ops["tutorial"] == res["op_counts"]["tutorial_per_step"]
    assert ops["unit"] == "aten ops that would be kernels"


def test_cuda_launches_are_counted_under_the_op_that_made_them():
    """On CUDA the profiler shows the host's launches (cudaLaunchKernel, cudaMemcpyAsync) as
    children of the aten op that issued them; allocation and view ops issue none."""

    def ev(name, parent=None):
        e = SimpleNamespace(name=name, cpu_parent=parent, cpu_children=[])
        if parent is not None:
            parent.cpu_children.append(e)
        return e

    conv = ev("aten::conv2d")
    cast = ev("aten::copy_", ev("aten::_to_copy", ev("aten::to", conv)))
    launches = [
        ev("cudaLaunchKernel", cast),
        ev("cudaLaunchKernel", ev("aten::cudnn_convolution", conv)),
        ev("cudaLaunchKernel", ev("aten::cudnn_convolution", conv)),
    ]
    item = ev("aten::item")
    copy = ev("cudaMemcpyAsync", ev("aten::_local_scalar_dense", item))
    empty = ev("aten::empty")
    events = [conv, cast, *launches, item, copy, empty] + [e.cpu_parent for e in launches]
    counted = bench_ops.device_work(events, cuda=True)
    assert counted == {
        "aten::copy_ < aten::conv2d": 1,
        "aten::cudnn_convolution < aten::conv2d": 2,
        "aten::_local_scalar_dense < aten::item": 1,
    }

    # CPU: the innermost ops that compute
    cpu = bench_ops.device_work([conv, item, empty], cuda=False)
    assert cpu == {
        "aten::copy_ < aten::conv2d": 1,
        "aten::cudnn_convolution < aten::conv2d": 2,
        "aten::_local_scalar_dense < aten::item": 1,
    }
