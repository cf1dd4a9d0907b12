"""FaceCode: its one field list and the batch layout."""

import jax
import numpy as np

from mofa.code import FaceCode


def test_code_fields_are_the_dataclass_fields_and_round_trip_through_a_batch(builtin_model):
    import dataclasses

    from mofa.code import FIELDS, random_code

    assert FIELDS == tuple(f.name for f in dataclasses.fields(FaceCode))
    code = random_code(builtin_model, jax.random.key(0), (2,))
    batch = {f"code/{k}": v for k, v in code.as_dict().items()}
    again = FaceCode.from_batch(batch)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(again, field), getattr(code, field))
