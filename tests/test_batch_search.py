"""Choosing the device batch: candidates, the winner (fastest, ties to the largest), when to stop."""
from nanolaunch import batch_search


def probe(batch, tps, status="ok", gpu="H100"):
    return {"device_batch": batch, "tokens_per_second": tps, "status": status, "gpu": gpu}


def test_candidates_divide_the_total_batch_largest_first():
    assert batch_search.candidates(524_288, 2048, 1) == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert batch_search.candidates(524_288, 2048, 8) == [32, 16, 8, 4, 2, 1]
    assert batch_search.candidates(4096, 256, 1) == [16, 8, 4, 2, 1]
    assert batch_search.candidates(3 * 2048, 2048, 1) == [3, 1]  # any divisor, not only powers of two
    assert batch_search.candidates(1000, 2048, 1) == []


def test_fastest_wins_and_near_ties_go_to_the_larger_batch():
    rows = [probe(64, None, "oom"), probe(32, 100.0), probe(16, 120.0), probe(8, 118.0)]
    assert batch_search.best(rows)["device_batch"] == 16  # faster than 32 by more than the tie
    rows = [probe(32, 100.0), probe(16, 102.0), probe(8, 101.0)]
    assert batch_search.best(rows)["device_batch"] == 32  # 2% is a tie on a GPU: the larger batch
    cpu = [probe(16, 100.0, gpu="cpu"), probe(4, 115.0, gpu="cpu")]
    assert batch_search.best(cpu)["device_batch"] == 16  # CPU timings are noisier: 15% is still a tie
    assert batch_search.best([cpu[0], probe(2, 130.0, gpu="cpu")])["device_batch"] == 2  # 30% is real
    assert batch_search.best([probe(8, None, "oom")]) is None


def test_search_stops_after_two_probes_that_do_not_beat_the_best():
    assert not batch_search.should_stop([probe(32, 100.0), probe(16, 99.0)])
    assert batch_search.should_stop([probe(32, 100.0), probe(16, 99.0), probe(8, 97.0)])
    # a clear improvement resets the count; OOMs do not count
    assert not batch_search.should_stop([probe(64, None, "oom"), probe(32, 100.0), probe(16, 120.0), probe(8, 119.0)])
    assert batch_search.should_stop([probe(32, 100.0), probe(16, 120.0), probe(8, 119.0), probe(4, 90.0)])
