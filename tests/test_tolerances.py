"""The product's export thresholds equal the numbers tests/tolerances.py writes out, exactly: loosening a
threshold in the product (or adding a precision or a field to its table) fails here, not silently in the
tests that compare exported graphs against it."""

from __future__ import annotations

import dataclasses

from mmadapter.export import accuracy, validate
from mmadapter.runtime import graphs

from tolerances import (
    EVALUATE_AGREEMENT_MIN,
    EXPORT_COSINE_MIN,
    EXPORT_LOGITS_ATOL_FP32,
    EXPORT_TIE_MARGIN,
    EXPORT_TOLERANCES,
    EXPORT_TOP1_MIN,
)


def test_the_product_table_equals_the_tests_numbers() -> None:
    # asdict compares every field, so a field added to Tolerance must be added to the tests' table too.
    assert {precision: dataclasses.asdict(t) for precision, t in graphs.TOLERANCES.items()} == EXPORT_TOLERANCES
    assert graphs.TOP1_MIN == EXPORT_TOP1_MIN


def test_the_products_views_of_its_table_agree() -> None:
    """validate.py and accuracy.py re-export parts of the table (benchmarks read them): a view that drifted
    from the table, or was replaced by a number of its own, fails here."""
    assert validate.COSINE_MIN == EXPORT_COSINE_MIN
    assert validate.TIE_MARGIN == EXPORT_TIE_MARGIN
    assert validate.LOGITS_ATOL_FP32 == EXPORT_LOGITS_ATOL_FP32
    assert accuracy.TIE_MARGIN == EXPORT_TIE_MARGIN["int8"]
    assert accuracy.AGREEMENT_MIN == EVALUATE_AGREEMENT_MIN
