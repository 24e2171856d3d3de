"""The task registry: every task the request schema accepts has one module with ``run``."""

from __future__ import annotations

import importlib

from instantstyle import config, pipelines


def test_every_request_task_has_a_registered_module():
    assert tuple(pipelines.TASKS) == config.TASKS
    for task in pipelines.TASKS.values():
        module = importlib.import_module(f"instantstyle.pipelines.{task.module}")
        assert callable(module.run), task.name


def test_plain_text_to_image_is_the_only_request_that_skips_the_stylize_steps():
    req = config.make_request(flag_style=False, prompt="x", style=["a.png"])
    assert pipelines.task_of(req).name == "txt2img" and not pipelines.needs_stylize(req)
    regional = req.model_copy(update={"style_masks": ["m.png"]})
    assert pipelines.task_of(regional).name == "txt2img" and pipelines.needs_stylize(regional)
