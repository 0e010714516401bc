"""Build a run from a validated config: `setup` applies the configuration once.

The device and how the run executes there (null = auto: compile and CUDA graphs on CUDA), the
data set and its loaders (engine.loaders), the model, the plan of every step (core.step_plan),
the optimizer, the step (eager or graphed), the probes, the records, and the folder's own
checkpoint if it has one (engine.resume). The loop that trains the Run is engine.loop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from runner.config import ConfigError, RunConfig, TrainerConfig
from runner.core.headline import Headline
from runner.core.models import build_resnet
from runner.core.step_plan import describe, plan_steps
from runner.core.update_rule import Optimizer, rounding_note
from runner.data import load_splits
from runner.engine import allocator, checkpoint, lock, provenance
from runner.engine.execution import Execution, ExecutionPath
from runner.engine.loaders import augmented_recal_images, run_data
from runner.engine.records import Recorder
from runner.engine.resume import saved_state
from runner.engine.run import Output, Run, RunData, Trainee
from runner.engine.state import LoopStats, RunState
from runner.probes import Subject, make_probes

log = logging.getLogger("runner")


class _Prefixed(logging.LoggerAdapter):
    """Log lines of one run among several in a process carry the run's name."""

    def process(self, msg, kwargs):
        return (f"[{self.extra['name']}] {msg}" if self.extra["name"] else msg), kwargs


def setup(
    cfg: RunConfig,
    run_dir: Path,
    meta: dict | None = None,
    job_num: int = 0,
    name: str = "",
    data_cache: dict | None = None,
) -> Run:
    """Everything a run needs, continued from the folder's own checkpoint if it has one. `name`
    prefixes the run's log lines; `data_cache` shares loaded data sets among the runs of one
    process (sweeps.pack, and a benchmark that times runs on data it loaded itself)."""
    run_dir, t_start = Path(run_dir), time.time()
    # one writer per folder (the CLI took it already, before Hydra wrote .hydra/)
    lock.hold(run_dir)
    saved, state, facts = saved_state(cfg, run_dir, meta)
    path = execution_path(cfg.trainer, use_device(pick_device(cfg.trainer.device, job_num)))
    torch.manual_seed(cfg.seed)
    autocast = device_settings(cfg.trainer, path)
    splits = load_splits(cfg.data, cfg.seed, data_cache)
    data = run_data(cfg, splits, path)
    run_log = _Prefixed(log, {"name": name})
    trainee, sentences = make_trainee(cfg, path, autocast, data, state, run_log)
    if saved is not None:
        continue_from(saved, trainee, state.step, run_dir / "checkpoints", facts)
    subject = Subject(
        trainee.model,
        trainee.opt,
        trainee.plan,
        autocast,
        stage_index(trainee.model, trainee.opt, path.device),
        lambda: augmented_recal_images(cfg, splits, path),
        cfg.batch_size,
    )
    probes = make_probes(cfg.probes, subject)
    for probe in probes if saved is not None else ():
        probe.load_state_dict(saved["probes"].get(probe.name, {}))
    recorder = Recorder(run_dir, resume_step=state.step, histograms_every=cfg.log.histograms_every)
    facts.update(run_facts(cfg, trainee, data, path, sentences), setup_s=time.time() - t_start)
    facts.update(applied_facts(trainee.plan, probes))
    spe = trainee.plan.steps_per_epoch
    total = cfg.epochs * spe
    run = Run(
        cfg=cfg,
        path=path,
        trainee=trainee,
        data=data,
        out=Output(run_dir, recorder, run_log),
        probes=probes,
        headline=Headline(data.recal_images is not None),
        total=total if cfg.trainer.max_steps is None else min(cfg.trainer.max_steps, total),
        val_every=cfg.trainer.val_every or spe,
        facts=facts,
        state=state,
        stats=LoopStats(t_start=t_start),
    )
    announce(run)
    applied = {f"{k}_applied": v for k, v in facts["applied"].items()}
    recorder.start(dataclasses.asdict(cfg), facts.get("choices"), facts.get("swept"), applied)
    return run


def continue_from(saved: dict, trainee: Trainee, step: int, where: Path, facts: dict) -> None:
    """The trainee put back as the checkpoint `saved` (of step `step`) left it, said in the log."""
    if missed := restore(saved, trainee, where):  # a checkpoint of a machine with more GPUs
        facts["resumed"]["cuda_rng_not_restored"] = missed
    epoch = step / trainee.plan.steps_per_epoch
    log.info("continuing from step %d (epoch %.2f) of %s", step, epoch, where)


def applied_facts(plan, probes) -> dict:
    """The λ and λ₂ applied (optimizer.wd_tau and wd_normalized set λ) and what the probes
    measure on (e.g. which kernels C counts)."""
    out = {"applied": {"wd": plan.lam_now if plan.lam_now is not None else plan.wd, "l2": plan.l2}}
    if probed := {p.name: f for p in probes if (f := p.facts())}:
        out["probes"] = probed
    return out


# ---------------------------------------------------------------- where and how it runs


def pick_device(name: str, job_num: int = 0) -> torch.device:
    """auto prefers cuda, then mps, then cpu; an explicit device that is not there is a user
    error. With several GPUs, sweep job i runs on GPU i mod n (a joblib sweep's parallel jobs
    spread out)."""
    have = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(k for k in ("cuda", "mps", "cpu") if have[k])
    if not have[name]:
        raise ConfigError(
            f"trainer.device={name!r} is not available on this machine: use trainer.device=auto or "
            "cpu"
        )
    if name == "cuda":
        return torch.device("cuda", job_num % torch.cuda.device_count())
    return torch.device(name)


def use_device(device: torch.device) -> torch.device:
    """Make a CUDA device the current one: what torch takes without a device (a capture's sync and
    memory pool, a new stream, cuDNN's handle) then points at this run's GPU, not GPU 0."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def execution_path(tr: TrainerConfig, device: torch.device) -> ExecutionPath:
    """The speed settings as they apply on `device`: null (auto) means on for CUDA (bf16: on a CUDA
    card that computes it natively). Graphs step aside for a compile mode that records its own."""
    cuda = device.type == "cuda"
    compiled = cuda if tr.compile is None else tr.compile
    own_graphs = compiled and tr.compile_mode in ("reduce-overhead", "max-autotune")
    graphs = (cuda and not own_graphs) if tr.cuda_graphs is None else tr.cuda_graphs
    if graphs and not cuda:
        raise ConfigError(
            f"trainer.cuda_graphs=true needs a CUDA device and this run got "
            f"{device.type}: drop trainer.cuda_graphs=true"
        )
    bf16 = tr.precision == "bf16" or (tr.precision == "auto" and cuda and native_bf16(device))
    if bf16 and cuda and not native_bf16(device):
        p = torch.cuda.get_device_properties(device)
        raise ConfigError(
            f"trainer.precision=bf16: {p.name} ({device}, compute capability {p.major}.{p.minor}) "
            "has no native bfloat16 (it needs 8.0 or later) and torch would emulate it, more "
            "slowly than fp32: use trainer.precision=auto (fp32 on this card) or fp32"
        )
    return ExecutionPath(
        device=device,
        precision="bf16" if bf16 else "fp32",
        compile=compiled,
        compile_mode=tr.compile_mode if compiled else None,
        cuda_graphs=graphs,
        channels_last=cuda if tr.channels_last is None else tr.channels_last,
    )


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA `device` computes bfloat16 natively: torch.cuda.is_bf16_supported(
    including_emulation=False)'s rule (compute capability 8.0 or later; ROCm always), for this
    device rather than the current one. Older cards emulate it, more slowly than float32."""
    return bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8


def device_settings(tr: TrainerConfig, path: ExecutionPath):
    """Determinism and cuDNN autotuning as configured; returns the autocast context the step
    runs under."""
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if path.device.type == "cuda":
        torch.backends.cudnn.benchmark = not tr.deterministic
    if path.device.type == "cpu":  # a step's large buffers reused, not mapped afresh (allocator)
        allocator.tune_for_cpu()
    if path.precision != "bf16":
        return nullcontext()
    # a CUDA graph cannot hold autocast's cache of cast weights (the PyTorch CUDA graph notes)
    return torch.autocast(path.device.type, torch.bfloat16, cache_enabled=not path.cuda_graphs)


@contextmanager
def torch_settings_kept():
    """torch's process-wide settings that device_settings changes (deterministic algorithms, cuDNN
    autotuning) put back as they were once the block ends, so that the next job of a sweep in this
    process starts from them, not from this run's. Around a whole run or pack (engine.train.train,
    sweeps.pack.train_pack, as a decorator): a pack's jobs keep the settings until the last ends."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def use_compile_cache(folder: str | None) -> None:
    """torch.compile's on-disk caches (Inductor's compiled graphs and autotuning, Triton's
    kernels) in `folder`, so that a later process compiles from them (a warm start); None leaves
    torch's own, /tmp/torchinductor_$USER."""
    if folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder).expanduser().resolve())


# ---------------------------------------------------------------- what trains


def make_trainee(
    cfg: RunConfig,
    path: ExecutionPath,
    autocast,
    data: RunData,
    state: RunState,
    run_log: logging.LoggerAdapter,
) -> tuple[Trainee, list[str]]:
    """(the model, optimizer, plan and step, the sentences that say what regularizes how). The
    step runs on `path` and falls back to a safer one where compile or capture fails and the
    setting was left automatic (engine.execution)."""
    m = cfg.model
    n_classes = len(data.inference.classes)
    model = build_resnet(m.depth, m.version, n_classes, m.bn_momentum).to(path.device)
    if path.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spe = len(data.train)
    check_length(cfg, spe, state)
    plan = plan_steps(cfg, data.n_train, spe, state.schedule_epochs)  # before anything is written
    o = cfg.optimizer
    opt = Optimizer(
        model,
        algorithm=o.algorithm,
        l2=plan.l2,
        decay_on=o.decay_on,
        betas=o.betas,
        eps=o.eps,
        momentum=o.momentum,
        nesterov=o.nesterov,
        capturable=path.cuda_graphs,
    )
    n_values = sum(p.numel() for p in opt.regularized)
    sentences = describe(plan, cfg, len(opt.regularized), n_values)
    total = cfg.epochs * spe if cfg.trainer.max_steps is None else cfg.trainer.max_steps
    note = rounding_note(plan.d[:total])
    if path.compile:
        use_compile_cache(cfg.trainer.compile_cache)
    tr = cfg.trainer
    automatic = frozenset(k for k in ("compile", "cuda_graphs") if getattr(tr, k) is None)
    execution = Execution(model, opt, autocast, plan, path, state.step, automatic, run_log)
    return Trainee(model, opt, autocast, plan, execution), sentences + ([note] if note else [])


def check_length(cfg: RunConfig, spe: int, state: RunState) -> None:
    """A continued run may grow its run, not cut it short of the steps it already ran."""
    if state.step > cfg.epochs * spe:
        raise ConfigError(
            f"epochs={cfg.epochs} ends at step {cfg.epochs * spe}, before step {state.step} that "
            f"this run already reached: a continued run cannot shrink its run; give epochs >= "
            f"{-(-state.step // spe)}"
        )


def restore(saved: dict, trainee: Trainee, where: Path) -> list[int]:
    """Weights, optimizer state and RNGs of a checkpoint; returns the GPUs whose saved CUDA RNG
    state this machine could not take (checkpoint.cuda_rng_states). CheckpointError for contents
    that do not fit (an intact file this runner's loop did not write)."""
    try:
        trainee.model.load_state_dict(saved["model"])
        trainee.opt.load_state_dict(saved["optimizer"])
        return checkpoint.set_rng_state(saved["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise checkpoint.CheckpointError(
            f"the newest checkpoint in {where} does not fit this run ({type(e).__name__}: "
            f"{first}): it was not written by this runner for this model. Move it away to continue "
            "from the previous one, or start a new run in a new folder"
        ) from None


def stage_index(model: nn.Module, opt: Optimizer, device: torch.device) -> dict[str, torch.Tensor]:
    """{stage: positions of its regularized tensors in opt.regularized}."""
    position = {id(p): i for i, p in enumerate(opt.regularized)}
    out = {}
    for stage, params in model.stage_parameters().items():
        where = [position[id(p)] for _, p in params if id(p) in position]
        if where:
            out[stage] = torch.tensor(where, device=device)
    return out


# ---------------------------------------------------------------- what it says


def run_facts(
    cfg: RunConfig, trainee: Trainee, data: RunData, path: ExecutionPath, sentences: list[str]
) -> dict:
    """What summary.json says about the run besides its results."""
    return {
        "n_params": sum(p.numel() for p in trainee.model.parameters() if p.requires_grad),
        "regularization": sentences,
        "data": {
            "name": cfg.data.name,
            "source": cfg.data.source,
            "root": cfg.data.root,
            "n_train": data.n_train,
            "n_val": data.n_val,
            # the images BatchNorm is recalibrated on (0: off; trainer.bn_recalibrate)
            "n_recalibrate": 0 if data.recal_images is None else len(data.recal_images),
            "fingerprint": data.fingerprint,
        },
        "code": provenance.code_version(),
        "env": provenance.environment(path.device),
    }


def announce(run: Run) -> None:
    """The run's first lines: what trains on what, and one sentence per regularization
    mechanism."""
    cfg, f = run.cfg, run.facts
    model = f"resnet{cfg.model.depth}v{cfg.model.version}"
    run.out.log.info(
        "%s on %s (%s): %d params, %d train / %d val images, %d steps (%d per epoch)",
        model,
        run.device,
        run.trainee.path.describe(),
        f["n_params"],
        run.data.n_train,
        run.data.n_val,
        run.total,
        run.steps_per_epoch,
    )
    for sentence in f["regularization"]:
        warn = sentence.startswith("float32 rounding")
        (run.out.log.warning if warn else run.out.log.info)(sentence)
