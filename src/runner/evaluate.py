"""`python -m runner.evaluate RUN_DIR|CHECKPOINT [data overrides] [--predictions FILE]`: a
checkpoint's accuracy and loss on its run's test split or on any image folder, with the run's own
normalization, and each image's prediction in a CSV file if asked.

    python -m runner.evaluate outputs/latest                    best.pt on the run's test split
    python -m runner.evaluate RUN_DIR/checkpoints/last.pt       the newest checkpoint's weights
    python -m runner.evaluate RUN_DIR data=image_folder data.root=DIR       DIR/test/<class>/*
    python -m runner.evaluate RUN_DIR data.val_subset=1000 --predictions predictions.csv

best.pt carries what inference needs (the class names, normalize, mean, std, image_size) and the
BatchNorm statistics its accuracy was measured with, so on the run's own test images it gives
what the run recorded for them: `test_acc_selected` with data.val_split, `best_val_acc` when the
whole test split was the validation set. A step checkpoint (last.pt) holds the running statistics
and no inference settings: they are computed again from the run's training images, as the run
computed them. Images of a class the checkpoint does not know are refused.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from runner.config import ConfigError, DataConfig, UserError
from runner.core.evaluation import evaluate
from runner.core.loader import DeviceLoader, stratified_subset
from runner.core.models import build_resnet
from runner.data import load_splits, normalization
from runner.engine import checkpoint
from runner.engine.build import native_bf16, pick_device
from runner.engine.loaders import VAL_BATCH

INFERENCE = ("classes", "normalize", "mean", "std", "image_size")  # best.pt's, beside the weights


@dataclasses.dataclass
class Images:
    """The evaluated images: uint8 (N, C, H, W), labels in the checkpoint's classes, where they
    came from, and each image's file when they are files."""

    x: torch.Tensor
    y: torch.Tensor
    where: str
    paths: list[str] | None = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m runner.evaluate",
        description="A checkpoint's accuracy and loss on its run's test split or an image folder.",
    )
    p.add_argument("target", help="a run folder (its checkpoints/best.pt) or a checkpoint file")
    p.add_argument("overrides", nargs="*", help="data=NAME, data.KEY=VALUE (e.g. data.root=DIR)")
    p.add_argument(
        "--predictions", type=Path, metavar="FILE", help="write each image's prediction to this CSV"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    args = p.parse_args(argv)
    try:
        result = evaluate_checkpoint(args.target, args.overrides, args.device, args.predictions)
    except UserError as e:
        print(f"runner.evaluate: error: {e}", file=sys.stderr)
        return 2
    print(report(result))
    return 0


def evaluate_checkpoint(
    target: str, overrides: list[str], device: str = "auto", predictions: Path | None = None
) -> dict:
    """{path, step, saved, images, where, acc, loss, recorded}: the checkpoint `target` (a run
    folder: its best.pt) evaluated on the test split of the data its run trained on, or of the
    data the overrides name."""
    path = checkpoint_path(target)
    ckpt = load(path)
    config = ckpt["config"]
    d = data_config(config["data"], overrides)
    classes, mean, std, size = inference(ckpt, config)
    images = test_images(d, config.get("seed", 0), classes)
    if list(images.x.shape[1:]) != list(size):
        raise ConfigError(
            f"the images of {images.where} are {tuple(images.x.shape[1:])} and {path} was trained "
            f"on {tuple(size)}: give images of its size"
        )
    dev = pick_device(device)
    model, forward, channels_last = restored_model(ckpt, path, len(classes), dev)
    loader = DeviceLoader(
        images.x,
        images.y,
        VAL_BATCH.get(dev.type, 100),
        device=dev,
        shuffle=False,
        pad_last=True,
        mean=mean,
        std=std,
        channels_last=channels_last,
    )
    loss, acc = (float(v) for v in torch.stack(evaluate(model, forward, loader)).tolist())
    if predictions is not None:
        write_predictions(predictions, model, forward, loader, images, classes)
    own = not overrides and d.val_subset is None and path.name == checkpoint.BEST
    return {
        "path": path,
        "step": ckpt.get("step"),
        "saved": (ckpt.get("val_acc"), ckpt.get("val_metric")),
        "images": len(images.y),
        "where": images.where,
        "acc": acc,
        "loss": loss,
        "recorded": recorded(path, config) if own else None,
    }


def checkpoint_path(target: str) -> Path:
    """A run folder's checkpoints/best.pt, or the file given."""
    path = Path(target).expanduser()
    if path.is_dir():
        best = path / "checkpoints" / checkpoint.BEST
        if not best.is_file():
            raise ConfigError(
                f"{target} has no checkpoints/{checkpoint.BEST} (a run writes it at its first "
                f"validation): give a checkpoint file, e.g. {path / 'checkpoints' / 'last.pt'}"
            )
        return best
    if not path.is_file():
        raise ConfigError(f"{target}: no such run folder or checkpoint file")
    return path


def load(path: Path) -> dict:
    """The checkpoint in `path`, checked to be one of this runner's: weights and a config."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle that names code, bytes of anything else
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise checkpoint.CheckpointError(
            f"{path} cannot be read as a checkpoint ({first}): it is damaged (a copy cut short?) "
            "or not a torch file written by this runner"
        ) from None
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if (
        not isinstance(ckpt, dict)
        or not isinstance(ckpt.get("model"), dict)
        or not (isinstance(config, dict) and {"model", "data"} <= config.keys())
    ):
        raise checkpoint.CheckpointError(
            f"{path} is not a checkpoint of this runner (it holds no weights with their run's "
            "config): give a run folder or its checkpoints/best.pt or last.pt"
        )
    if ckpt.get("format") != checkpoint.FORMAT:
        raise checkpoint.CheckpointError(
            f"{path} has checkpoint format {ckpt.get('format')!r} and this runner reads format "
            f"{checkpoint.FORMAT}: evaluate it with the runner version that wrote it"
        )
    return ckpt


def data_config(saved: dict, overrides: list[str]) -> DataConfig:
    """The run's data settings (or the preset `data=NAME`) with `data.KEY=VALUE` laid over them.
    The test split is evaluated whole: the run's subset, val_split and val_subset do not apply
    (a data.val_subset given here does)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    presets = [o.split("=", 1)[1] for o in overrides if o.startswith("data=")]
    keys = [o[len("data.") :] for o in overrides if o.startswith("data.") and "=" in o]
    if len(presets) + len(keys) != len(overrides):
        wrong = next(o for o in overrides if not o.startswith(("data=", "data.")) or "=" not in o)
        raise ConfigError(
            f"{wrong}: only the data can change here, as data=NAME or data.KEY=VALUE (e.g. "
            "data=image_folder data.root=DIR)"
        )
    if presets:
        import runner.configs

        file = Path(runner.configs.__file__).parent / "data" / f"{presets[-1]}.yaml"
        if not file.is_file():
            names = sorted(f.stem for f in file.parent.glob("*.yaml"))
            raise ConfigError(f"data={presets[-1]}: no such preset; one of {', '.join(names)}")
        base = OmegaConf.load(file)
    else:
        base = {**saved, "subset": None, "val_split": None, "val_subset": None}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DataConfig), base)
        merged.merge_with_dotlist(keys)
        return OmegaConf.to_object(merged)  # DataConfig.__post_init__ checks the values
    except OmegaConfBaseException as e:
        raise ConfigError(f"{' '.join(overrides)}: {str(e).splitlines()[0]}") from None


def inference(ckpt: dict, config: dict) -> tuple[list[str], object, object, list[int]]:
    """(classes, mean, std, image size): best.pt's own, or for a step checkpoint computed from the
    run's training images as the run computed them (engine.loaders)."""
    if all(k in ckpt for k in INFERENCE):
        return list(ckpt["classes"]), ckpt["mean"], ckpt["std"], list(ckpt["image_size"])
    d = DataConfig(**config["data"])
    d.check_root()
    splits = load_splits(d, config.get("seed", 0))
    mean, std = normalization(d, splits)
    return list(splits.classes), mean, std, list(splits.train_x.shape[1:])


def test_images(d: DataConfig, seed: int, classes: list[str]) -> Images:
    """The test split of `d` (image folders: DIR/test alone), labelled in the checkpoint's
    `classes` by name, and data.val_subset's stratified part of it when given."""
    if d.source == "image_folder":
        from runner.data.image_folder import load_test_split

        d.check_root()
        x, y, names, paths = load_test_split(d.root)
        where = f"{Path(d.root) / 'test'}"
    else:
        whole = dataclasses.replace(d, subset=None, val_split=None, val_subset=None)
        splits = load_splits(whole, seed)
        x, y, names, paths = splits.val_x, splits.val_y, list(splits.classes), None
        where = f"the test split of data={d.name or d.source}"
    unknown = sorted(set(names[i] for i in y.unique().tolist()) - set(classes))
    if unknown:
        raise ConfigError(
            f"{where} holds images of the classes {unknown}, which the checkpoint does not know "
            f"(it knows {', '.join(classes)}): leave those folders out"
        )
    y = torch.tensor([classes.index(names[i]) for i in y.tolist()], dtype=torch.int64)
    if d.val_subset:
        if d.val_subset > len(y):
            raise ConfigError(f"data.val_subset={d.val_subset}: {where} has {len(y)} images")
        keep = stratified_subset(y, d.val_subset)
        x, y = x[keep], y[keep]
        paths = None if paths is None else [paths[i] for i in keep.tolist()]
    return Images(x, y, where, paths)


def restored_model(ckpt: dict, path: Path, n_classes: int, device: torch.device):
    """(the model with the checkpoint's weights and statistics, its forward, channels_last): in
    the precision and memory layout its run evaluated in on this kind of device."""
    m, tr = ckpt["config"]["model"], ckpt["config"].get("trainer", {})
    model = build_resnet(m["depth"], m["version"], n_classes, m["bn_momentum"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise checkpoint.CheckpointError(
            f"{path}: its weights do not fit the model its config names "
            f"(resnet{m['depth']}v{m['version']}, {n_classes} classes): {str(e).splitlines()[0]}"
        ) from None
    cuda = device.type == "cuda"
    channels_last = cuda if tr.get("channels_last") is None else tr["channels_last"]
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = tr.get("precision", "auto")
    bf16 = precision == "bf16" or (precision == "auto" and cuda and native_bf16(device))
    autocast = torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast:
            return model(x)

    return model.eval(), forward, channels_last


@torch.no_grad()
def write_predictions(path: Path, model, forward, loader, images: Images, classes) -> None:
    """One row per image: index, file (image folders), label, prediction, its softmax probability,
    and whether it is right."""
    model.eval()
    predicted, confidence = [], []
    for x, _ in loader.epoch(0):
        p = forward(x).float().softmax(1).max(1)
        predicted.append(p.indices)
        confidence.append(p.values)
    n = len(images.y)
    predicted = torch.cat(predicted)[:n].tolist()  # the padding of the last batch goes
    confidence = torch.cat(confidence)[:n].tolist()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "file", "label", "prediction", "confidence", "correct"])
        for i, (label, pred, conf) in enumerate(zip(images.y.tolist(), predicted, confidence)):
            file = images.paths[i] if images.paths is not None else ""
            w.writerow([i, file, classes[label], classes[pred], f"{conf:.6f}", int(label == pred)])


def recorded(path: Path, config: dict) -> tuple[str, float] | None:
    """What best.pt's run recorded for its own whole test split, from its summary.json:
    test_acc_selected (data.val_split), or best_val_acc when the test split was the validation."""
    try:
        summary = json.loads((path.parent.parent / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if summary.get("test_acc_selected") is not None:
        return "test_acc_selected", summary["test_acc_selected"]
    whole = config["data"].get("val_subset") is None and config["data"].get("val_split") is None
    if whole and summary.get("best_val_acc") is not None:
        return "best_val_acc", summary["best_val_acc"]
    return None


def report(r: dict) -> str:
    """The result in a few lines."""
    acc, metric = r["saved"]
    saved = "" if acc is None else f"; val_acc {acc:.4f} when saved, {metric} statistics"
    lines = [
        f"{r['path']} (step {r['step']}{saved})",
        f"on {r['where']} ({r['images']} images): accuracy {r['acc']:.4f}, loss {r['loss']:.4f}",
    ]
    if r["recorded"] is not None:
        key, value = r["recorded"]
        lines.append(f"its run recorded {key} {value:.4f} for these images")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
