"""The reader's sketch bins are the engine's: same growth factor, same offset."""

from msgtally.reconcile import _machine
from msgtally.slis.read import sketch


def test_reader_and_engine_agree_on_the_bins() -> None:
    assert sketch.GAMMA == _machine.SKETCH_GAMMA
    assert sketch.OFFSET == _machine.SKETCH_OFFSET


def test_quantile_is_the_nearest_rank_bin() -> None:
    # Bins above and below zero: -b mirrors b, and 0 is zero itself.
    bins = {-(sketch.OFFSET + 10): 1, 0: 1, sketch.OFFSET + 5: 2}
    assert sketch.quantile(bins, 0.25) == -sketch.bin_value(sketch.OFFSET + 10)
    assert sketch.quantile(bins, 0.5) == 0.0
    assert sketch.quantile(bins, 0.75) == sketch.bin_value(sketch.OFFSET + 5)
    assert sketch.quantile({}, 0.5) is None
