"""The configuration contract: what composes, what is refused, and the message a user sees."""

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, TINY, compose_cfg, run_cli
from omegaconf import OmegaConf

from runner import config
from runner.config import (
    OBJECTIVES,
    ConfigError,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    choices,
    non_training_keys,
    refused_changes,
    resumable_keys,
    validate,
)


def test_defaults_compose_to_resnet56v2_adamw():
    run = validate(compose_cfg())
    assert (run.model.name, run.model.depth, run.model.version) == ("resnet56v2", 56, 2)
    assert run.optimizer.name == "adamw" and run.wd > 0 and run.l2 == 0
    assert run.data.name == "cifar10" and run.data.root
    assert run.schedule.name == run.schedule.shape == "piecewise_constant"


def test_the_two_documented_commands_compose_exactly_as_written():
    run = validate(compose_cfg("optimizer=adamw", "wd=5e-4"))
    assert run.wd == 5e-4 and run.l2 == 0
    run = validate(compose_cfg("optimizer=adam_l2", "l2=1e-4"))
    assert run.l2 == 1e-4 and run.wd == 0 and run.optimizer.algorithm == "adam"


def test_any_optimizer_takes_both_wd_and_l2():
    run = validate(compose_cfg("optimizer=adamw", "wd=1e-3", "l2=1e-4"))
    assert (run.wd, run.l2) == (1e-3, 1e-4)


def test_every_optimizer_and_schedule_preset_composes():
    for opt, algo in (("adamw", "adam"), ("adam_l2", "adam"), ("sgdw", "sgd"), ("sgd_l2", "sgd")):
        assert validate(compose_cfg(f"optimizer={opt}")).optimizer.algorithm == algo
    for sched in (
        "piecewise_constant",
        "keras",
        "piecewise_linear",
        "triangular",
        "warm_restarts",
        "cosine",
    ):
        validate(compose_cfg(f"schedule={sched}"))


def test_l2_presets_turn_decoupled_decay_off_and_vice_versa():
    for opt in ("adam_l2", "sgd_l2"):
        run = validate(compose_cfg(f"optimizer={opt}"))
        assert run.wd == 0 and run.l2 > 0
    for opt in ("adamw", "sgdw"):
        run = validate(compose_cfg(f"optimizer={opt}"))
        assert run.wd > 0 and run.l2 == 0


@pytest.mark.parametrize(
    "name",
    [
        "resnet20v1",
        "resnet32v1",
        "resnet44v1",
        "resnet56v1",
        "resnet110v1",
        "resnet20v2",
        "resnet56v2",
        "resnet110v2",
        "resnet164v2",
    ],
)
def test_every_model_preset_composes(name):
    run = validate(compose_cfg(f"model={name}"))
    assert run.model.name == name and f"{run.model.depth}v{run.model.version}" in name


@pytest.mark.parametrize(
    "override, key",
    [
        ("lr=-1", "lr"),
        ("lr=0", "lr"),
        ("wd=-1e-4", "wd"),
        ("l2=-1", "l2"),
        ("l2=nan", "l2"),
        ("wd=inf", "wd"),
        ("epochs=0", "epochs"),
        ("batch_size=0", "batch_size"),
        ("lr=abc", "lr"),
        ("epochs=1.5", "epochs"),
        ("trainer.device=tpu", "trainer.device"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.val_every=-3", "trainer.val_every"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("data.subset=0", "data.subset"),
        ("data.pad_mode=wrap", "data.pad_mode"),
        ("model.depth=57", "model.depth"),
        ("schedule.milestones=[0.8,0.5]", "schedule.milestones"),
        ("schedule.factors=[0.1]", "schedule.factors"),
        ("schedule.milestones=[0.5,1.5]", "schedule.milestones"),
        ("optimizer.betas=[0.9,1.0]", "optimizer.betas"),
        ("optimizer.wd_scaling=paper", "optimizer.wd_scaling"),
        ("optimizer.decay_on=bn", "optimizer.decay_on"),
        ("optimizer.eps=0", "optimizer.eps"),
        ("+trainer.max_step=3", "max_step"),
        ("optimizer=sgdw", None),
        ("optimizer=sgdw optimizer.momentum=1.0", "optimizer.momentum"),
        ("schedule=warm_restarts schedule.T_0=0", "schedule.T_0"),
        ("schedule=warm_restarts schedule.T_mult=0.5", "schedule.T_mult"),
        ("schedule=piecewise_linear schedule.knots=[[0,1],[0.5,1],[0.3,0]]", "schedule.knots"),
        ("schedule=piecewise_linear schedule.knots=[[0,1],[1.5,0]]", "schedule.knots"),
        ("schedule=piecewise_linear schedule.knots=[[0,1]]", "schedule.knots"),
        ("schedule.warmup_epochs=-1", "schedule.warmup_epochs"),
        ("schedule.factors=[0.1,-1]", "schedule.factors"),
        ("optimizer=sgd_l2 optimizer.nesterov=true optimizer.momentum=0", "optimizer.nesterov"),
        ("trainer.diverge_factor=0.5", "trainer.diverge_factor"),
        ("trainer.on_diverge=ignore", "trainer.on_diverge"),
        ("probes.shadow_bn=[0.03,1.0]", "probes.shadow_bn"),
        ("probes.shadow_bn=[0.03,0.03]", "probes.shadow_bn"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, key):
    if key is None:  # a valid preset, listed to show it composes among the bad ones
        validate(compose_cfg(*override.split()))
        return
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*override.split()))
    assert key in str(e.value)


def test_choice_errors_list_the_allowed_values():
    with pytest.raises(ConfigError, match=r"auto \| cpu \| cuda \| mps"):
        validate(compose_cfg("trainer.device=tpu"))


def test_a_refused_value_is_one_clean_line_naming_the_full_key_and_the_fix():
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg("optimizer.wd_scaling=foo"))
    assert (
        str(e.value)
        == "optimizer.wd_scaling='foo' is invalid: allowed values are schedule | lr | none"
    )
    # nothing of OmegaConf's chained onto it
    assert e.value.__cause__ is None and e.value.__context__ is None


def test_a_section_built_by_hand_is_checked_too():
    with pytest.raises(ConfigError, match=r"^optimizer.wd_scaling='paper' is invalid"):
        OptimizerConfig(wd_scaling="paper")
    with pytest.raises(ConfigError, match=r"^model.depth=57 is invalid"):
        ModelConfig(depth=57)
    # every schema default is valid (OmegaConf builds the sections' defaults to read the schema)
    RunConfig()


def test_a_crash_inside_a_rule_is_a_bug_and_stays_a_traceback(monkeypatch):
    rules = ModelConfig.__post_init__

    def crashing(self):
        rules(self)
        if self.depth == 20:
            raise TypeError("a bug in a rule")

    monkeypatch.setattr(ModelConfig, "__post_init__", crashing)
    with pytest.raises(Exception, match="a bug in a rule") as e:
        validate(compose_cfg("model=resnet20v1"))
    assert not isinstance(e.value, ConfigError)


def test_each_section_knows_its_key_in_the_run_config():
    hints = typing.get_type_hints(RunConfig)
    sections = {
        f.name: hints[f.name]
        for f in dataclasses.fields(RunConfig)
        if dataclasses.is_dataclass(hints[f.name])
    }
    assert set(sections) == {"model", "optimizer", "schedule", "data", "trainer", "log", "probes"}
    assert {name: cls.section for name, cls in sections.items()} == {
        name: name for name in sections
    }


def test_allowed_values_are_read_from_the_fields():
    assert choices("trainer.device") == ("auto", "cpu", "cuda", "mps")
    assert choices("model.version") == (1, 2)
    assert choices("trainer.objective") == OBJECTIVES
    assert choices("lr") == ()


@pytest.mark.parametrize(
    "key", [k for k, f in config._leaves(RunConfig) if f.metadata.get("choices")]
)
def test_every_declared_choice_is_enforced_with_the_list(key):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(f"{key}=bogus" if key != "model.version" else "model.version=3"))
    assert str(e.value).startswith(f"{key}=") and " | ".join(map(str, choices(key))) in str(e.value)


def test_resumable_keys_are_exactly_the_settings_that_do_not_change_the_training():
    # evaluations, observation, where the data lies: training goes on bit for bit
    assert set(resumable_keys()) == {
        "epochs",
        "trainer.max_steps",
        "trainer.val_every",
        "trainer.log_every",
        "trainer.progress",
        "trainer.device",
        "trainer.compile",
        "trainer.compile_mode",
        "trainer.compile_cache",
        "trainer.cuda_graphs",
        "trainer.extend_schedule",
        "trainer.objective",
        "log.histograms_every",
        "report",
        "resume",
        "name",
        "tags",
        "trainer.train_eval",
        "trainer.bn_recalibrate",
        "probes.equilibrium",
        "probes.step_angle",
        "probes.l2_terms",
        "probes.bn_staleness",
        "probes.shadow_bn",
    }
    cfg, absent = compose_cfg(), object()
    assert [k for k in resumable_keys() if OmegaConf.select(cfg, k, default=absent) is absent] == []


def test_the_settings_that_do_not_train_are_read_from_the_schema_and_all_may_change_on_resume():
    assert set(non_training_keys()) - set(resumable_keys()) == {
        "reg",
        "data.root",
        "data.download",
        "data.verify",
    }
    assert {"trainer.device", "data.root", "probes.bn_staleness", "reg", "resume"} <= set(
        non_training_keys()
    )
    assert not {"lr", "wd", "l2", "seed", "epochs", "trainer.max_steps"} & set(non_training_keys())


def test_a_run_may_have_a_name_and_tags_that_do_not_change_its_training():
    run = validate(compose_cfg("name=baseline-2.lr_1e-3", "tags=[adamw,first try]"))
    assert (run.name, run.tags) == ("baseline-2.lr_1e-3", ["adamw", "first try"])
    assert validate(compose_cfg()).name is None and validate(compose_cfg()).tags == []
    assert {"name", "tags"} <= set(non_training_keys()) & set(resumable_keys())
    for bad in ("a/b", "-x", "x" * 65, "two words", "é"):
        with pytest.raises(ConfigError, match=r"^name=.* is invalid: a run's name is part of its"):
            validate(compose_cfg(f"name='{bad}'"))
    for bad in ("[a,'']", "['a,b']"):
        with pytest.raises(ConfigError, match=r"^tags=.* is invalid: each tag is 1 to 64"):
            validate(compose_cfg(f"tags={bad}"))


def run_folders(*overrides: str) -> tuple[str, str]:
    """hydra.run.dir and hydra.sweep.dir as the real config resolves them."""
    from hydra import compose, initialize_config_dir

    from runner.sweeps import callbacks

    callbacks.register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.run.dir, cfg.hydra.sweep.dir


def test_a_name_ends_the_run_and_sweep_folder_names():
    run, sweep = run_folders("name=baseline")
    assert run.startswith("outputs/20") and run.endswith("_baseline")
    assert sweep.startswith("multirun/20") and sweep.endswith("_baseline")
    run, sweep = run_folders()
    assert re.fullmatch(r"outputs/[\d-]+/[\d-]+_[0-9a-f]{6}", run), run


def test_a_continued_run_may_change_what_is_resumable_and_nothing_else():
    old = dataclasses.asdict(RunConfig())
    assert refused_changes(old, {**old, "epochs": 60}) is None
    assert refused_changes(old, {**old, "trainer": {**old["trainer"], "device": "cpu"}}) is None
    assert refused_changes(old, {**old, "lr": 0.5}) == "lr: 0.001 → 0.5"


IDENTITY = ("model.depth", "model.version", "schedule.shape", "data.source")  # what a preset is


def test_every_default_is_declared_once_in_the_schema_and_the_yaml_sets_only_what_differs():
    """A preset that repeats a schema default would hide where the default lives."""
    import yaml

    schema = config.flatten(dataclasses.asdict(RunConfig()))
    for path in sorted(Path(CONFIG_DIR).glob("*/*.yaml")):
        if path.parent.name in ("experiment", "debug", "arm", "shrink", "hydra"):
            continue
        values = yaml.safe_load(path.read_text()) or {}
        values.pop("defaults", None)
        prefix = "" if "@package _global_" in path.read_text() else f"{path.parent.name}."
        for key, value in config.flatten(values, prefix).items():
            if key.endswith(".name") or key in IDENTITY or key not in schema:
                continue
            assert value != schema[key], (
                f"{path.name}: {key}={value!r} repeats the schema's default"
            )


def test_config_py_imports_neither_torch_nor_omegaconf():
    """`--help` stays quick, and scripts/bench.py builds RunConfig on a machine without Hydra."""
    code = "import sys, runner.config as c; c.RunConfig(); "
    code += "print('torch' in sys.modules, 'omegaconf' in sys.modules)"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert probe.stdout.split() == ["False", "False"], probe.stderr


# ---- the keys of the new trainer: defaults, and what each refuses


def test_new_keys_default_as_documented():
    run = validate(compose_cfg())
    t = run.trainer
    assert (t.compile, t.cuda_graphs) == (None, None)  # null = auto: on for CUDA, off elsewhere
    # null = by device: 2048 images on CUDA, 512 elsewhere (core.evaluation.recalibration_images)
    assert (t.bn_recalibrate, t.extend_schedule, t.objective) == (None, None, "best_val_acc")
    assert run.data.drop_last is True and run.report is False
    # the schema's defaults are the YAML's
    assert dataclasses.asdict(RunConfig().trainer) == dataclasses.asdict(t)


@pytest.mark.parametrize(
    "n, ok",
    [(0, True), (2, True), (10000, True), ("null", True), (1, False), (10001, False), (-1, False)],
)
def test_bn_recalibrate_is_off_or_between_2_and_10000_images(n, ok):
    if ok:
        got = validate(compose_cfg(f"trainer.bn_recalibrate={n}")).trainer.bn_recalibrate
        assert got == (None if n == "null" else n)
    else:
        with pytest.raises(
            ConfigError,
            match=rf"^trainer.bn_recalibrate={n} is invalid: must be null \(by device\), 0 \(off\)",
        ):
            validate(compose_cfg(f"trainer.bn_recalibrate={n}"))


def test_objective_is_one_of_the_numeric_summary_keys():
    for key in OBJECTIVES:
        assert validate(compose_cfg(f"trainer.objective={key}")).trainer.objective == key
    with pytest.raises(
        ConfigError, match=r"trainer.objective='status' is invalid: allowed values are best_val_acc"
    ):
        validate(compose_cfg("trainer.objective=status"))


def test_extend_schedule_is_rescale_hold_or_null():
    for value in ("rescale", "hold", "null"):
        validate(compose_cfg(f"trainer.extend_schedule={value}"))
    with pytest.raises(
        ConfigError, match=r"trainer.extend_schedule='stretch' is invalid: .*rescale \| hold"
    ):
        validate(compose_cfg("trainer.extend_schedule=stretch"))


def test_drop_last_and_report_are_booleans():
    run = validate(compose_cfg("data.drop_last=false", "report=true"))
    assert run.data.drop_last is False and run.report is True
    with pytest.raises(ConfigError, match="data.drop_last"):
        validate(compose_cfg("data.drop_last=sometimes"))


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_cuda_graphs_auto_is_fine_off_cuda_but_true_is_refused(device):
    assert validate(compose_cfg(f"trainer.device={device}")).trainer.cuda_graphs is None
    with pytest.raises(
        ConfigError,
        match=rf"trainer.cuda_graphs=True is invalid: .*not {device}: drop trainer.cuda_",
    ):
        validate(compose_cfg(f"trainer.device={device}", "trainer.cuda_graphs=true"))


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_a_compile_mode_with_its_own_graphs_is_refused_in_cuda_graphs_unless_compile_is_off(mode):
    graphs = ["trainer.cuda_graphs=true", f"trainer.compile_mode={mode}"]
    validate(compose_cfg(*graphs, "trainer.compile=false"))  # the mode is never used
    with pytest.raises(
        ConfigError, match=rf"trainer.compile_mode='{mode}' is invalid: .*cannot nest"
    ):
        validate(compose_cfg(*graphs, "trainer.compile=true"))
    with pytest.raises(
        ConfigError, match=r"trainer.compile=null compiles on CUDA.*or trainer.compile=false"
    ):
        validate(compose_cfg(*graphs))  # compile left to auto may well be on
    # graphs left to the trainer
    validate(compose_cfg("trainer.compile=true", f"trainer.compile_mode={mode}"))
    for safe in ("default", "max-autotune-no-cudagraphs"):
        validate(
            compose_cfg(
                "trainer.cuda_graphs=true", "trainer.compile=true", f"trainer.compile_mode={safe}"
            )
        )


def test_image_folder_needs_its_own_root_not_cifar10s():
    with pytest.raises(
        ConfigError, match=r"^data.root=None is invalid: data=image_folder needs a folder"
    ):
        validate(compose_cfg("data=image_folder"))
    assert (
        validate(compose_cfg("data=image_folder", "data.root=/data/cinic10")).data.root
        == "/data/cinic10"
    )


def test_a_missing_image_folder_is_named_before_torch_is_imported(tmp_path):
    """Checked where the run starts (DataConfig.check_root), not by validate: a sweep is validated
    where it is launched, which may not see the folders its jobs' machines see."""
    run = validate(compose_cfg("data=image_folder", f"data.root={tmp_path / 'missing'}"))
    with pytest.raises(ConfigError, match=r"^data.root='\S+missing' is invalid: no such folder"):
        run.data.check_root()
    poison = tmp_path / "poison" / "torch"  # any import of torch fails with its own message
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text('raise ImportError("torch was imported")')
    pythonpath = f"{poison.parent}:{Path(config.__file__).parents[1]}"
    r = run_cli(
        ["data=image_folder", f"data.root={tmp_path / 'missing'}"],
        cwd=tmp_path,
        env_extra={"PYTHONPATH": pythonpath},
    )
    assert r.returncode == 2 and "torch was imported" not in r.stderr
    assert r.stderr.strip().endswith("needs DIR/train/<class>/* and DIR/test/<class>/*")
    validate(compose_cfg("data=image_folder", f"data.root={tmp_path}")).data.check_root()


# ---- debug=tiny and debug=smoke, and every preset of every group

OLD_TINY = [
    "data=synthetic",
    "model=resnet20v1",
    "trainer.device=cpu",
    "epochs=2",
    "batch_size=64",
    "data.n_train=512",
    "data.n_val=200",
    "trainer.progress=false",
    "model.bn_momentum=0.1",
]


def test_debug_tiny_is_the_tiny_run_the_tests_spelled_out_before():
    smoke = dataclasses.asdict(validate(compose_cfg(*TINY)))
    spelled = dataclasses.asdict(validate(compose_cfg(*OLD_TINY)))
    assert (
        smoke["trainer"].pop("bn_recalibrate") == 256
        and spelled["trainer"].pop("bn_recalibrate") is None
    )
    assert smoke == spelled


def test_debug_smoke_is_the_demo_with_the_bar_on_a_terminal():
    run = validate(compose_cfg("debug=smoke"))
    assert (run.trainer.progress, run.trainer.device, run.epochs, run.data.name) == (
        None,
        "cpu",
        3,
        "synthetic",
    )


def test_debug_tiny_can_still_be_overridden_and_shrinks_an_experiment():
    run = validate(
        compose_cfg("debug=tiny", "trainer.progress=true", "epochs=3", "model=resnet32v1")
    )
    assert (run.trainer.progress, run.epochs, run.model.name) == (True, 3, "resnet32v1")
    run = validate(compose_cfg("experiment=adamw_oscillate", "debug=tiny"))
    assert (run.epochs, run.model.name, run.data.name) == (2, "resnet20v1", "synthetic")
    # the rest of the experiment stays
    assert run.schedule.shape == "warm_restarts" and run.trainer.train_eval


GROUPS = ("model", "optimizer", "schedule", "data", "experiment", "arm", "debug")
PRESETS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]
# what a preset needs from the command line
NEEDS = {
    ("data", "image_folder"): ["data.root=/data/cinic10"],
    ("experiment", "oscillation_study_cpu"): ["data.root=/data/cifar10-jpg"],
}


def test_the_preset_list_covers_every_group():
    # shrink's files compose only with their debug and experiment (tests/test_study_presets.py)
    on_disk = {
        d.name
        for d in Path(CONFIG_DIR).iterdir()
        if d.is_dir() and d.name not in ("hydra", "shrink", "__pycache__")
    }
    assert on_disk == set(GROUPS) and {g for g, _ in PRESETS} == set(GROUPS)


@pytest.mark.parametrize("group, option", PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_every_preset_of_every_group_composes_and_validates(group, option):
    validate(compose_cfg(f"{group}={option}", *NEEDS.get((group, option), [])))


@pytest.mark.slow
def test_cli_refuses_before_any_work_and_leaves_no_folder(tmp_path):
    r = run_cli(["lr=-1"], cwd=tmp_path)
    assert r.returncode == 2
    assert "lr=-1.0 is invalid" in r.stderr and "Traceback" not in r.stderr
    assert not any((tmp_path / "outputs").rglob("*.jsonl"))
    assert not list((tmp_path / "outputs").glob("*/*")), (
        "an invalid run leaves no run folder behind"
    )


@pytest.mark.slow
def test_cli_unknown_group_option_lists_the_options(tmp_path):
    r = run_cli(["optimizer=adamx"], cwd=tmp_path)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "optimizer/adamx" in out and "adam_l2" in out and "adamw" in out


@pytest.mark.slow
def test_cli_help_does_not_import_torch(tmp_path):
    r = run_cli(["--help"], cwd=tmp_path, env_extra={"PYTHONVERBOSE": ""})
    assert r.returncode == 0 and "optimizer: adam_l2, adamw" in r.stdout
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", "import sys, runner.__main__; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert probe.stdout.strip() == "False"


@pytest.mark.parametrize(
    "override, key",
    [
        ("epochs=100000000", "epochs="),
        ("model.depth=60002", "model.depth="),
        ("data.n_train=100000000", "data.n_train="),
        ("data.crop_padding=100000", "data.crop_padding="),
        ("seed=99999999999999999999", "seed="),
        ("seed=-1", "seed="),
        ("schedule=piecewise_linear", None),
    ],
)
def test_values_that_would_exhaust_the_machine_or_break_the_maths_are_refused_naming_the_key(
    override, key
):
    extra = ["schedule.knots=[[0.0,1.0],[nan,0.5],[1.0,0.0]]"] if key is None else []
    extra += ["optimizer.wd_scaling=none"] if override == "wd=1" else []
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*TINY, override, *extra))
    assert str(e.value).startswith(key or "schedule.knots=") and "\n" not in str(e.value)


def test_bounds_leave_the_largest_sensible_values_alone():
    validate(
        compose_cfg(
            *TINY, "epochs=10000", "model.depth=1202", "data.crop_padding=32", f"seed={2**63 - 1}"
        )
    )
    validate(compose_cfg(*TINY, "wd=0.5", "optimizer.wd_scaling=none"))


def test_integer_knots_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"schedule.knots\[0\].*decimal point \(0.0, 1.0\)"):
        validate(compose_cfg(*TINY, "schedule=piecewise_linear", "schedule.knots=[[0,1],[1,0]]"))


# ---- traps in the defaults and the records


def test_reg_together_with_wd_or_l2_is_refused_naming_both():
    for opt, key in (("adamw", "wd"), ("adam_l2", "l2"), ("adamw", "l2"), ("sgd_l2", "wd")):
        with pytest.raises(
            ConfigError, match=rf"^reg=0.001 and {key}=0.0001 are both set: .*give reg or {key}"
        ):
            validate(compose_cfg(f"optimizer={opt}", "reg=1e-3", f"{key}=1e-4"))
    # reg alone goes where the preset says
    assert validate(compose_cfg("optimizer=adamw", "reg=1e-3")).wd == 1e-3
    assert validate(compose_cfg("optimizer=adamw", "wd=1e-4")).wd == 1e-4
    # a zero changes nothing
    assert validate(compose_cfg("optimizer=adam_l2", "reg=1e-3", "wd=0")).l2 == 1e-3


def test_the_sgd_presets_start_at_sgds_usual_lr_and_a_given_lr_still_wins():
    for opt in ("sgdw", "sgd_l2"):
        assert validate(compose_cfg(f"optimizer={opt}")).lr == 0.1
        assert validate(compose_cfg(f"optimizer={opt}", "lr=0.05")).lr == 0.05
    assert validate(compose_cfg("optimizer=adamw")).lr == 1e-3


def test_a_schedule_records_its_preset_as_its_name_beside_the_shape_it_uses():
    for preset, shape in (
        ("cosine", "warm_restarts"),
        ("keras", "piecewise_constant"),
        ("triangular", "piecewise_linear"),
    ):
        s = validate(compose_cfg(f"schedule={preset}")).schedule
        assert (s.name, s.shape) == (preset, shape)


def test_only_synthetic_data_has_an_image_count_to_record():
    assert validate(compose_cfg("data=image_folder", "data.root=/data/x")).data.n_train is None
    with pytest.raises(
        ConfigError, match=r"^data.n_train=500 is invalid: only data=synthetic makes its images"
    ):
        # Hydra refuses it bare
        validate(compose_cfg("data=image_folder", "data.root=/data/x", "+data.n_train=500"))
    assert validate(compose_cfg("data=synthetic")).data.n_train is None  # the generator's own
    with pytest.raises(ConfigError, match=r"^data.val_subset=0 is invalid"):
        validate(compose_cfg("data.val_subset=0"))


def test_a_removed_config_group_is_refused_instead_of_training_the_schema_defaults():
    for group in ("model", "optimizer", "schedule", "data"):
        with pytest.raises(ConfigError, match=rf"^{group} is not set \(removed with ~{group}\?\)"):
            validate(compose_cfg(f"~{group}"))


def test_config_comments_send_readers_to_docs_that_hold_what_they_promise():
    """A comment names the file that explains its setting: an existing docs/ path, never "the
    README" (which points to docs/ for details); another project's README (Keras') may be quoted."""
    import re

    root = Path(CONFIG_DIR).parent
    for f in Path(CONFIG_DIR).rglob("*.yaml"):
        text = f.read_text()
        for path in re.findall(r"docs/[\w/.-]*\w", text):
            assert (root / path).exists(), (f.name, path)
        ours = [m for m in re.finditer("README", text) if text[m.start() - 4 : m.start()] != "its "]
        assert not ours, f"{f.name} points to the README"
