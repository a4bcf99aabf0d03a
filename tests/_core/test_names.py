"""The one slug (``_core/names.py``): run folders, benchmark figures and cache keys use it."""

from __future__ import annotations

import pytest

from face_concepts._core.names import slug
from face_concepts.pipeline.shared import class_run_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Egyptian cat", "egyptian_cat"),
        ("resnet18/layer3.1", "resnet18_layer3_1"),
        ("__Tiger, Panthera tigris__", "tiger__panthera_tigris"),
        ("Café crème", "café_crème"),  # str.isalnum: letters of any script are kept
        (" -- ", ""),
        (285, "285"),
    ],
)
def test_slug_by_hand(text, expected):
    assert slug(text) == expected


@pytest.mark.parametrize("text", ["A b", "--x--y--", "ÉTÉ 2024!", "", "a/b\\c:d"])
def test_slug_is_a_safe_file_name_and_idempotent(text):
    s = slug(text)
    assert all(ch.isalnum() or ch == "_" for ch in s)
    assert not s.startswith("_") and not s.endswith("_")
    assert s == s.lower() and slug(s) == s


def test_class_run_name_uses_the_slug():
    assert class_run_name(285, "Egyptian cat") == "285_" + slug("Egyptian cat")
    assert class_run_name(7, None) == "7" and class_run_name(7, "!!") == "7"
