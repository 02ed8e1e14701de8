"""Recipes (``-o recipe=NAME``): a task's named TrainConfig defaults and ``-o`` options, below the user's own.

The official CenterMask2 schedules are detection's recipes (:mod:`vovnet.tasks.detection.recipes`); their values
come from centermask2's configs and detectron2's defaults (sources in docs/recipes.md).
"""

import pytest

from vovnet.cli import build_parser, main
from vovnet.cli.train_cmd import requested_settings
from vovnet.engine import TrainConfig
from vovnet.engine.task import get_task, task_config
from vovnet.errors import UsageError


def settings(*argv: str) -> dict:
    """The settings ``vovnet train ARGV`` passes to :func:`task_config`."""
    return requested_settings(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize("name, img_size, epochs, steps, sizes, lite", [
    ("centermask2", 800, 37, [210_000 / 270_000, 250_000 / 270_000], [640, 672, 704, 736, 768, 800], False),
    ("centermask2_lite", 600, 49, [300_000 / 360_000, 340_000 / 360_000], [580, 600], True),
])
def test_a_recipe_sets_the_official_schedule_and_options(name, img_size, epochs, steps, sizes, lite):
    config = task_config(**settings("--task", "detect", "--data", "coco:ann.json:images", "-o", f"recipe={name}"))
    assert (config.opt, config.lr, config.momentum, config.weight_decay, config.batch_size) == ("sgd", 0.01, 0.9, 1e-4, 16)
    assert (config.lr_schedule, config.lr_steps, config.lr_gamma) == ("step", steps, 0.1)
    assert (config.img_size, config.epochs, config.clip_grad) == (img_size, epochs, 0.0)
    assert config.warmup_epochs == pytest.approx(1000 * 16 / 118_287)  # detectron2's WARMUP_ITERS at 16 images a step
    assert config.task_options == {"recipe": name}  # what was asked is what config.yaml records
    task = get_task("detect")(config)
    assert task.options["dialect"] == "centermask2" and task.options["lite"] is lite
    assert task.options["train_sizes"] == sizes and task.options["mask_detections_per_gt"] is None
    detector = task.detector_config(["a", "b"])
    assert (detector.dialect, detector.train_sizes, detector.lite) == ("centermask2", tuple(sizes), lite)
    assert (detector.min_size, detector.max_size) == (img_size, 1333 if img_size == 800 else 1000)  # the official test size


def test_explicit_flags_and_options_win_over_the_recipe():
    config = task_config(**settings("--task", "detect", "-o", "recipe=centermask2_lite", "--lr", "0.02", "--lr-steps", "0.5",
                                    "--opt", "adamw", "-o", "train_sizes=[320]"))
    assert (config.lr, config.lr_steps, config.opt, config.lr_schedule) == (0.02, [0.5], "adamw", "step")
    task = get_task("detect")(config)
    assert task.options["train_sizes"] == [320] and task.options["dialect"] == "centermask2"


def test_no_recipe_changes_nothing_and_a_task_alone_applies_its_options():
    assert task_config(task="detect") == task_config(task="detect", task_options={"recipe": None}).replace(task_options={})
    task = get_task("detect")(TrainConfig(task="detect", task_options={"recipe": "centermask2"}))
    assert task.options["train_sizes"] == [640, 672, 704, 736, 768, 800] and task.options["dialect"] == "centermask2"


def test_an_unknown_recipe_is_one_line_naming_the_known_ones(capsys):
    with pytest.raises(UsageError, match="unknown recipe 'nope' for --task detect; choose from centermask2, centermask2_lite, detectron2"):
        task_config(task="detect", task_options={"recipe": "nope"})
    with pytest.raises(UsageError, match="unknown recipe 'nope' for --task detect"):
        get_task("detect")(TrainConfig(task="detect", task_options={"recipe": "nope"}))
    assert main(["train", "--task", "detect", "-o", "recipe=centermask3"]) == 2
    err = capsys.readouterr().err
    assert err == "vovnet train: error: unknown recipe 'centermask3' for --task detect; choose from centermask2, centermask2_lite, detectron2\n"
    assert main(["train", "-o", "recipe=centermask2"]) == 2  # classify has no recipes
    assert capsys.readouterr().err.strip().splitlines() == ["vovnet train: error: unknown recipe 'centermask2' for --task classify; choose from none"]
