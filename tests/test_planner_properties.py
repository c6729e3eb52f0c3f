"""Property: whatever the inputs, the planner answers or refuses in one clean line; it never crashes."""
from hypothesis import given, settings, strategies as st

from nanolaunch import planner
from nanolaunch.config import RunConfig
from nanolaunch.errors import NanolaunchError

gpu_names = st.sampled_from(["A100", "A100-80GB", "H100", "H200", "L40S", "RTX4090", "cpu", "TPU", "h100", ""])


@settings(max_examples=300, deadline=None)
@given(depth=st.integers(-2, 80), batch=st.integers(-1, 512), seq=st.integers(-1, 1 << 15),
       gpu=gpu_names, count=st.integers(0, 20), nodes=st.integers(-1, 64),
       total=st.one_of(st.none(), st.integers(-1, 1 << 24)), ratio=st.one_of(st.none(), st.floats(-5, 1e4)),
       iterations=st.one_of(st.none(), st.integers(-5, 10**7)), vocab=st.integers(-1, 300_000),
       mfu=st.one_of(st.none(), st.floats(-1, 2)), spot=st.booleans(), shards=st.one_of(st.none(), st.integers(-1, 3000)))
def test_planner_never_raises_anything_but_a_clean_refusal(depth, batch, seq, gpu, count, nodes, total, ratio,
                                                           iterations, vocab, mfu, spot, shards):
    fields = dict(depth=depth, device_batch=batch, seq_len=seq, gpu=f"{gpu}:{count}", nodes=nodes, ratio=ratio,
                  iterations=iterations, vocab_size=vocab, spot=spot, shards=shards)
    if total is not None:
        fields["total_batch"] = total
    try:
        p = planner.plan(RunConfig.build(**fields), mfu=mfu)
    except NanolaunchError as e:
        message = str(e)
        assert message and "\n" not in message
        return
    assert p["iterations"] >= 1 and p["grad_accum"] >= 1
    assert p["peak_memory_gib"] > 0
    assert p["mfu"] is None or 0 < p["mfu"] <= 1
