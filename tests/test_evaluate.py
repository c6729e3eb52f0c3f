"""val_bpb and its bar: gzip -9 on the very text val_bpb is measured on."""
import gzip
from contextlib import nullcontext

import torch

from trainer.data import TokenLoader, split_shards
from trainer.evaluate import Evaluator


def test_gzip_bpb_compresses_exactly_the_bytes_val_bpb_divides_by(corpus, tokenizer):
    _, val = split_shards(corpus)
    token_bytes = tokenizer.token_bytes()
    evaluator = Evaluator(lambda: TokenLoader(val, tokenizer, 4, 64), 8, token_bytes, torch.device("cpu"),
                          nullcontext, tokenizer.decode_bytes)
    targets = [t for _, y in evaluator._batches() for t in y.view(-1).tolist()]
    counted = sum(token_bytes[t] for t in targets)  # val_bpb's denominator
    text = b"".join(tokenizer.decode_bytes([t]) for t in targets if token_bytes[t] > 0)
    assert len(text) == counted and counted > 2_000
    assert evaluator.gzip_bpb() == 8 * len(gzip.compress(text, 9)) / counted
    assert 0.5 < evaluator.gzip_bpb() < 4  # Python source: gzip's usual ratio, nowhere near 8 bits a byte
    assert Evaluator(evaluator.make_loader, 8, token_bytes, torch.device("cpu"), nullcontext).gzip_bpb() is None
