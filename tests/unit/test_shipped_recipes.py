"""The training recipes in configs/train: each one loads, and each distillation teacher holds out
exactly the rows its student is validated on."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "train"
TEACHERS = sorted(RECIPES.glob("*_teacher.yaml"))


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_recipe_loads(path):
    # Validation raises on any field the Recipe schema no longer accepts (extra="forbid").
    assert load_recipe(path).data.train.endswith((".tsv", ".jsonl"))


def test_the_shipped_teachers_are_found():
    assert {path.stem for path in TEACHERS} == {"clinc_intents_teacher", "sst2_sentiment_teacher"}


@pytest.mark.parametrize("teacher_path", TEACHERS, ids=lambda path: path.stem)
def test_a_teacher_trains_on_its_students_split(teacher_path):
    # A teacher that saw the student's validation rows would pass them on in its soft targets, and
    # the student's validation figure would flatter it.
    student = load_recipe(teacher_path.with_name(teacher_path.name.replace("_teacher", "")))
    teacher = load_recipe(teacher_path)
    assert teacher.data == student.data
    assert teacher.base_model != student.base_model
