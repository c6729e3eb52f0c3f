"""The compiled CUDA terms of the memory model are what the compiled graph keeps for backward: the census
(trainer/graph_census.py: AOTAutograd, inductor's decompositions and partitioner, CUDA's autocast op policy,
fake tensors at real sizes) is taken again here, and nanolaunch/memory.py's constants must match it. A trainer
change that changes what is saved fails here until the constants are regenerated
(`python -m trainer.graph_census`)."""
import pytest

from nanolaunch import memory
from trainer import graph_census
from trainer.arithmetic import ModelShape


@pytest.fixture(scope="module")
def census():
    return graph_census.fit()


def test_the_constants_are_the_census(census):
    c = memory.COMPILED_BF16
    assert census["activation_max_error"] < 0.005  # the linear form explains what is saved
    for key in ("per_layer_channel", "per_channel", "per_logit", "per_weight"):
        assert census[key] == pytest.approx(c[key], rel=0.005), key
    assert census["logit_spread"] == census["weight_spread"] == 0


def test_the_model_counts_what_the_census_counts(census):
    for row in census["census"]:
        shape = ModelShape(row["depth"], vocab_size=row["vocab"], seq_len=row["seq"])
        activations, logits = memory.compiled_bf16_saved_bytes(shape, row["batch"])
        assert activations == pytest.approx(row["activations"] + row["weight_copies"], rel=0.005)
        assert logits == pytest.approx(row["logits"], rel=1e-9)


def test_cuda_autocast_policy_is_pytorchs():
    """The emulated lists hold the ops the model uses, in PyTorch's own lists for CUDA (ATen/autocast_mode.h)."""
    import re
    from pathlib import Path

    import torch

    header = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
    if not header.exists():
        pytest.skip("this torch build ships no ATen headers")
    text = header.read_text()

    def listed(macro):
        block = text[text.index(f"#define {macro}(_)"):]
        block = block[:block.index("\n\n")]
        return set(re.findall(r"_\((\w+)", block))

    low, fp32, opt = listed("AT_FORALL_LOWER_PRECISION_FP"), listed("AT_FORALL_FP32"), listed(
        "AT_FORALL_FP32_SET_OPT_DTYPE")
    assert graph_census.LOWER_PRECISION <= low
    assert graph_census.FP32 - {"square", "cross_entropy"} <= fp32  # composites: square → pow, cross_entropy →
    assert graph_census.FP32_UNLESS_DTYPE <= opt                    # log_softmax (fp32) + nll_loss (fp32)
    assert {"pow", "nll_loss"} <= fp32 and "log_softmax" in opt
