"""val_bpb of karpathy/nanochat's own trainer and of ours at equal tokens, on the same text, judged by one evaluator.

    .venv/bin/python bench/nanochat_quality.py --nanochat /tmp/nanochat \\
        --nanochat-python /tmp/nanochat-venv/bin/python --work /tmp/nanochat-quality \\
        [--depths 4,6] [--seeds 0,1,2] [--steps 1000] [--vocab 4096] [--seq 256] [--device-batch 16] \\
        [--total-batch 8192] [--eval-every 100] [--compile] [--only ours|nanochat] [--variants default,ncsched]

Nothing of nanochat lives in this repository: --nanochat is a work tree of its repository (`git archive 92d63d4 |
tar -x`) and --nanochat-python an interpreter that runs it (torch, tiktoken, rustbpe, pyarrow, wandb, ...).

1. Corpus (WORK/data, copied to WORK/nanochat-base/base_data_climbmix/, where nanochat's dataset module looks):
   the standard-library text of trainer/corpus.py (stdlib_documents, --corpus-chars), cut at line boundaries into
   documents of at most --doc-chars characters (default 2 × seq), written as --shards parquet shards with a `text`
   column; the last shard is held out (both trainers take the last file as validation). Each trainer trains its own
   tokenizer of --vocab tokens (special tokens included) on the training shards: ours with the function our trainer
   calls (trainer.tokenizer.train_tokenizer over the training files in order, its default character budget), into
   WORK/ours-store/tokenizer_v<V>_c<chars> (given to the trainer as --tokenizer-dir); nanochat's with
   `python -m scripts.tok_train --vocab-size=V` into WORK/nanochat-base/tokenizer/. Then every document is
   tokenized with both: a document with 1 + tokens > seq under either is cut again at line boundaries, the shards
   rewritten and both tokenizers retrained, until every document fits a row with its BOS (the maximum is printed
   and kept in quality.json). So neither loader ever has to cut a document: nanochat packs whole BOS-prefixed
   documents into rows (best fit; it still crops a document to fill a row's tail), ours cuts one stream of
   BOS-prefixed documents into rows.

2. Training, per depth × seed, nanochat and each of our variants in turn (the first trainer alternates by seed),
   same shape (model_dim 64·depth, heads of 128, full causal attention), seq, device batch, total batch and steps,
   fp32, one process, OMP_NUM_THREADS=2:
   - nanochat: `NANOCHAT_BASE_DIR=WORK/nanochat-base NANOCHAT_DTYPE=float32 python -c <seed shim> SEED
     --run=dummy --device-type=cpu --depth=D --head-dim=128 --window-pattern=L --max-seq-len=S
     --device-batch-size=B --total-batch-size=TB --num-iterations=N --eval-every=E --eval-tokens=ET
     --core-metric-every=-1 --sample-every=-1 --model-tag=nanochat-dD-sSEED` (+ TORCHDYNAMO_DISABLE=1 for
     --no-compile). The shim (NANOCHAT_SEED_SHIM below) runs nanochat's own scripts/base_train.py with runpy,
     unmodified; base_train has no seed flag and calls torch.manual_seed(42), which the shim turns into
     torch.manual_seed(SEED). Its data order has no seed: nanochat's seeds vary the initialisation only.
     It writes its checkpoint to WORK/nanochat-base/base_checkpoints/<tag>/model_<N>.pt. --nanochat-variants lr1
     adds --matrix-lr/--embedding-lr/--unembedding-lr = its defaults ÷ √(TB / 2^19), so that after its own batch
     scaling its base learning rates are the effective ones (weight decay unchanged); lr1_wd0 adds
     --weight-decay=0.0, lr1_oursched our schedule (--warmup-steps=0 --warmdown-ratio=0.2 --final-lr-frac=0.0), lr1_nove
     lr1 without value embeddings, lr1_nolambda without its per-layer residual and x0 scalars (pinned at 1 and 0),
     lr1_nosmear / lr1_nobackout without smear / backout (their scalar pinned at 0), lr1_ns with our quintic
     Newton–Schulz in place of Polar Express (the shim and the evaluator's worker run NANOCHAT_ABLATIONS' code
     first).
   - ours: `python -m trainer.train --depth D --head-dim 128 --seq-len S --device-batch B --total-batch TB
     --vocab-size V --iterations N --device cpu --dtype fp32 --threads 2 --compile|--no-compile --seed SEED
     --data WORK/data --data-dir WORK/ours-store --tokenizer-dir WORK/ours-store/tokenizer_... --eval-every E
     --eval-tokens ET --checkpoint-every 0 --keep-checkpoints 1 --run-dir WORK/runs/<tag>`; the seed sets the
     initialisation and the data order. Variants (--variants): `default` (our defaults), `ncsched` (nanochat's LR
     schedule in our settings: --warmup-ratio 40/N --warmdown-ratio 0.65 --final-lr-frac 0.05), `nclr` (that
     schedule and nanochat's batch-scaled learning rates: matrix 0.02·s, embedding 0.3·s, unembedding 0.008·s,
     s = √(TB / 2^19)), `nclr1` (that schedule and nanochat's base rates unscaled, s = 1: what nanochat_lr1 trains
     with), `ve` (our defaults with --value-embeddings: nanochat's value residual). What no setting of ours can give (nanochat's weight decay, momentum schedule, AdamW betas,
     model extras) is listed in SCHEDULE_NOTES and in the report.

3. One evaluator (common_bpb below), run under each trainer's own interpreter on its final checkpoint, loaded
   through that trainer's own code (nanochat: nanochat.checkpoint_manager.build_model, its GPT and tokenizer; ours:
   trainer/checkpoint.py, trainer/gpt.py, our tokenizer), on the same held-out documents (the first documents of
   the validation shard, --eval-bytes of UTF-8 in all, WORK/eval_docs.json): per document, tokens = [BOS] +
   encode(doc) with that trainer's tokenizer, the model's summed cross-entropy (nats) of every token after BOS,
   each document on its own (no context from other documents); val_bpb = Σ nats / (ln 2 · Σ UTF-8 bytes of the
   documents). Beside it each trainer's own last val_bpb is kept (its own validation batches: other documents,
   rows that mix documents, nanochat's cropped tails) and the curve of val_bpb at its eval steps. The worker also
   re-evaluates the trainer's own validation batches from the checkpoint with the trainer's own code (nanochat:
   its val loader and loss_eval.evaluate_bpb; ours: trainer.dataset's val loader and trainer.evaluate.Evaluator):
   that must reproduce the trainer's own last val_bpb (a check that the checkpoint was loaded right), and the
   bytes per target token of those batches next to the common documents' says why own ≠ common. nanochat's
   best-fit loader fills each row with the longest documents (in tokens) of a 1,000-document buffer first, so
   its first eval_tokens are token-dense text (fewer bytes per token), and its own val_bpb reads higher.

Output: WORK/quality.json (every run: both val_bpb figures, curve, tokens, wall, step times; the summary) and
WORK/quality.md (the tables). WORK/records/<tag>.json keeps each finished run: a rerun with the same settings
skips it (--force runs it again), so an interrupted measurement continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Shared with the throughput bench: subprocess runner (wall, peak RSS, others' CPU share), environment, parsers.
from nanochat_side_by_side import base_env, cpu_model, load1, parse_nanochat, parse_ours, run  # noqa: E402

HEAD_DIM = 128
NC_WARMUP_STEPS, NC_WARMDOWN, NC_FINAL_LR = 40, 0.65, 0.05  # scripts/base_train.py defaults at 92d63d4
NC_LRS, NC_B_REF = {"matrix": 0.02, "embedding": 0.3, "unembedding": 0.008}, 2**19
NC_EVAL = re.compile(r"^Step (\d+) \| Validation bpb: ([\d.]+)", re.M)
NC_TOKENS = re.compile(r"^Total number of training tokens: ([\d,]+)", re.M)
NC_LR_SCALE = re.compile(r"Scaling LRs by ([\d.]+)")
NC_WD = re.compile(r"Scaling weight decay from ([\d.]+) to ([\d.]+)")
# Ablations no flag of nanochat's gives: code run before its model is built, in training (the shim) and in the
# evaluator's worker alike (env NANOCHAT_ABLATION names one; its module file is untouched)
def _frozen_scalars(*names: str, neutral: str) -> str:
    """Code that pins some of nanochat's learned scalars at their neutral values: set after init, their gradient
    zeroed by a hook and their AdamW weight decay off, so they stay exactly there."""
    return (
        "import torch, nanochat.gpt as g\n"
        "_init, _setup = g.GPT.init_weights, g.GPT.setup_optimizer\n"
        f"def _frozen(m): return [getattr(m, n) for n in {names!r}]\n"
        "def init_weights(self):\n"
        "    _init(self)\n"
        f"    {neutral}\n"
        "    for p in _frozen(self): p.register_hook(torch.zeros_like)\n"
        "def setup_optimizer(self, *a, **k):\n"
        "    opt = _setup(self, *a, **k)\n"
        "    frozen = {id(p) for p in _frozen(self)}\n"
        "    for group in opt.param_groups:\n"
        "        if any(id(p) in frozen for p in group['params']): group['weight_decay'] = 0.0\n"
        "    return opt\n"
        "g.GPT.init_weights, g.GPT.setup_optimizer = init_weights, setup_optimizer\n")


NANOCHAT_ABLATIONS = {
    "nove": "import nanochat.gpt as g; g.has_ve = lambda layer_idx, n_layer: False",  # no value embeddings
    # per-layer residual and x0 scalars at 1 and 0: x = 1·x + 0·x0 before every block
    "nolambda": _frozen_scalars("resid_lambdas", "x0_lambdas",
                                neutral="self.resid_lambdas.data.fill_(1.0); self.x0_lambdas.data.zero_()"),
    "nosmear": _frozen_scalars("smear_lambda", neutral="self.smear_lambda.data.zero_()"),  # gate × 0: no smear
    "nobackout": _frozen_scalars("backout_lambda", neutral="self.backout_lambda.data.zero_()"),
    # Muon's orthogonalisation by the quintic Newton–Schulz of ours (and modded-nanogpt) in place of Polar Express
    "ns": "import nanochat.optim as o; o.polar_express_coeffs[:] = [(3.4445, -4.7750, 2.0315)] * 5",
}
NANOCHAT_SEED_SHIM = ("import os, runpy, sys, torch; "
                      "exec(os.environ.get('NANOCHAT_ABLATION_CODE', '')); "
                      "seed = int(sys.argv.pop(1)); _seed = torch.manual_seed; "
                      "torch.manual_seed = lambda s: _seed(seed if s == 42 else s); sys.argv[0] = 'scripts/base_train.py'; "
                      "runpy.run_module('scripts.base_train', run_name='__main__', alter_sys=True)")

SCHEDULE_NOTES = [
    ("LR warmup", "0 steps (warmup_ratio 0)", "40 steps (--warmup-steps 40)", "ncsched: warmup_ratio 40/N"),
    ("LR warmdown", "last 20% of steps, linear (warmdown_ratio 0.2)", "last 65%, linear (--warmdown-ratio 0.65)",
     "ncsched: warmdown_ratio 0.65"),
    ("final LR", "0 (final_lr_frac 0)", "0.05 × peak (--final-lr-frac 0.05)", "ncsched: final_lr_frac 0.05"),
    ("learning rates", "matrix 0.02, embedding 0.2, unembedding 0.004 (AdamW ones × (d/768)^-0.5); no batch "
     "scaling", "matrix 0.02, embedding 0.3, unembedding 0.008, scalars 0.5, all × √(total batch / 2^19) "
     "(0.125 at 8,192), AdamW ones also × (d/768)^-0.5",
     "nclr: matrix/embedding/unembedding as nanochat's (batch-scaled); nclr1: its base rates, unscaled"),
    ("weight decay", "none", "Muon: cautious, 0.28 × √(B/2^19) × D_ref/D (printed per run), cosine to 0; "
     "AdamW: head 0.01, embedding 0.001, value embeddings 0.01, resid scalars 0.05", "no setting"),
    ("Muon momentum", "0.85 → 0.95 over 300 steps", "0.85 → 0.97 over 400 steps, 0.97 → 0.90 over the warmdown",
     "no setting"),
    ("Muon", "Newton–Schulz, 5 steps", "Polar Express, 5 steps, NorMuon variance reduction (factored second "
     "moment, beta2 0.9), cautious update", "no setting"),
    ("AdamW betas", "(0.8, 0.95)", "head (0.8, 0.96), embeddings (0.8, 0.995), scalars (0.8/0.96, 0.95)",
     "no setting"),
    ("model", "GPT: RMSNorm, rotary (base 10k), QK-norm, ReLU², soft-cap 15, untied head",
     "the same plus value embeddings, smear gate, backout, per-layer residual/x0 scalars, rotary base 100k",
     "no setting"),
    ("seed", "init and data order (--seed)", "none: torch.manual_seed(42) (the shim sets SEED); data order fixed",
     "—"),
    ("data rows", "one stream of [BOS]+doc cut into rows", "BOS-aligned best-fit packing, crops a doc to fill a row",
     "—"),
    ("tokenizer", "rustbpe, 1 special token (vocab − 1 merges+bytes)", "rustbpe, 9 special tokens (vocab − 9)", "—"),
]


# -- the one evaluator: both workers run this ----------------------------------------------------------------------
def common_bpb(loss_fn, encode_batch, bos: int, docs: list[str], seq: int, rows: int) -> dict:
    """Σ nats of every token after [BOS] of each document on its own / (ln 2 · Σ UTF-8 bytes of the documents).
    loss_fn(x, y) -> per-position cross-entropy in nats (targets -1 give 0); encode_batch(texts) -> token lists."""
    import torch

    ids = encode_batch(docs)
    longest = max(len(t) for t in ids) + 1  # with BOS
    if longest > seq:
        raise SystemExit(f"a held-out document has {longest} tokens with BOS, more than seq {seq}")
    order = sorted(range(len(docs)), key=lambda i: -len(ids[i]))  # like lengths batched together: little padding
    nats = [0.0] * len(docs)
    with torch.no_grad():
        for k in range(0, len(order), rows):
            chunk = order[k:k + rows]
            width = max(2, max(len(ids[i]) for i in chunk))  # nanochat's forward needs T > 1
            x = torch.zeros((len(chunk), width), dtype=torch.long)
            y = torch.full((len(chunk), width), -1, dtype=torch.long)  # right padding: causal, never attended to
            for r, i in enumerate(chunk):
                row = [bos] + ids[i]
                x[r, :len(row) - 1] = torch.tensor(row[:-1])
                y[r, :len(row) - 1] = torch.tensor(row[1:])
            loss = loss_fn(x, y).view(len(chunk), width).double()
            for r, i in enumerate(chunk):
                nats[i] = loss[r].sum().item()
    total_nats = math.fsum(nats)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return {"val_bpb": total_nats / (math.log(2) * n_bytes), "nats": total_nats, "bytes": n_bytes,
            "tokens": sum(map(len, ids)), "docs": len(docs), "max_tokens_with_bos": longest}


def worker(a) -> None:
    """Under the trainer's own interpreter: load its final checkpoint with its own code, run common_bpb."""
    import torch

    torch.set_num_threads(a.threads)
    docs = json.loads(Path(a.docs).read_text())
    if a.eval_worker == "nanochat":
        sys.path.insert(0, str(Path(a.nanochat).resolve()))
        # the run's ablation (NANOCHAT_ABLATIONS), as trained; in a namespace of its own (its functions' globals)
        exec(os.environ.get("NANOCHAT_ABLATION_CODE", ""), {})
        from nanochat.checkpoint_manager import build_model, find_last_step

        from nanochat.dataloader import tokenizing_distributed_data_loader_bos_bestfit
        from nanochat.loss_eval import evaluate_bpb
        from nanochat.tokenizer import get_token_bytes

        step = find_last_step(a.checkpoint)
        model, tok, meta = build_model(a.checkpoint, step, torch.device("cpu"), "eval")
        loss_fn = lambda x, y: model(x, y, loss_reduction="none")  # noqa: E731
        encode_batch, bos = (lambda texts: tok.encode(texts)), tok.get_bos_token_id()

        def own_eval():  # base_train's own evaluation: its val loader (the buffers are reused: copies), its bpb
            uc, token_bytes = meta["user_config"], get_token_bytes()
            steps = uc["eval_tokens"] // (uc["device_batch_size"] * uc["max_seq_len"])
            loader = tokenizing_distributed_data_loader_bos_bestfit(tok, uc["device_batch_size"], uc["max_seq_len"],
                                                                    split="val", device="cpu")
            batches = [tuple(t.clone() for t in next(loader)) for _ in range(steps)]
            return evaluate_bpb(model, batches, steps, token_bytes), batches, token_bytes
    else:
        sys.path.insert(0, str(REPO))
        from trainer import checkpoint
        from trainer.arithmetic import ModelShape
        from trainer.gpt import GPT
        from trainer.tokenizer import Tokenizer

        path = checkpoint.latest(a.checkpoint)
        if path is None:
            raise SystemExit(f"no complete checkpoint in {a.checkpoint}")
        state = json.loads((path / "state.json").read_text())
        step = state["step"]
        shape = ModelShape(**{k: state["shape"][k] for k in ("depth", "vocab_size", "seq_len", "head_dim")},
                           value_embeddings=state["shape"].get("value_embeddings", False))
        model = GPT(shape, fused_loss=False)
        model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
        model.eval()
        tok = Tokenizer.load(a.tokenizer)
        loss_fn = lambda x, y: model(x, y, reduction="none")  # noqa: E731
        encode_batch, bos = (lambda texts: tok.encode_batch(texts)), tok.bos_id

        def own_eval():  # the trainer's own evaluation: its config, val loader and Evaluator
            from contextlib import nullcontext

            from trainer.common import DistEnv
            from trainer.data import list_shards, split_shards
            from trainer.dataset import Dataset
            from trainer.evaluate import Evaluator
            from trainer.settings import TrainConfig, names

            cfg = TrainConfig(**{k: state["config"][k] for k in names()})
            data = Dataset(False, None, split_shards(list_shards(cfg.data))[1], tokenizer=tok)
            ev = Evaluator(lambda: data.val_loader(cfg, DistEnv(), threads=a.threads),
                           max(1, cfg.eval_tokens // (cfg.device_batch * cfg.seq_len)), tok.token_bytes(),
                           torch.device("cpu"), nullcontext)
            bpb = ev.bpb(model)
            return bpb, ev.batches, torch.tensor(tok.token_bytes())
    t0 = time.time()
    out = common_bpb(loss_fn, encode_batch, bos, docs, a.seq, a.device_batch)
    out |= {"step": step, "eval_seconds": round(time.time() - t0, 1), "params": sum(p.numel() for p in model.parameters()),
            "bytes_per_token": out["bytes"] / out["tokens"]}
    # The trainer's own validation batches again, from the checkpoint: this should give its own last val_bpb
    # (a check that the checkpoint was loaded right), and their bytes per token explain own ≠ common.
    own_bpb, batches, token_bytes = own_eval()
    b = torch.cat([token_bytes[y.long().view(-1)] for _, y in batches])
    out["own_batches"] = {"val_bpb": own_bpb, "targets": int((b > 0).sum()), "bytes": int(b.sum()),
                          "bytes_per_token": int(b.sum()) / int((b > 0).sum())}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


# -- corpus and tokenizers -----------------------------------------------------------------------------------------
def _write_shards(shard_docs: list[list[str]], dirs: list[Path]) -> None:
    from trainer.corpus import write_parquet_atomic

    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.parquet"):
            old.unlink()
        for i, docs in enumerate(shard_docs):
            write_parquet_atomic(d / f"shard_{i:05d}.parquet", docs, docs_per_row_group=128)


def _train_tokenizers(a, work: Path, data: Path, ours_tok: Path):
    """Ours as trainer/dataset.py trains it; nanochat's with its scripts.tok_train. Returns both encoders."""
    import pickle

    from trainer.data import iter_documents, list_shards, split_shards
    from trainer.settings import TrainConfig
    from trainer.tokenizer import train_tokenizer

    t0 = time.time()
    train_paths, _ = split_shards(list_shards(data))
    docs = (d for path in train_paths for d in iter_documents([path]))
    ours = train_tokenizer(docs, a.vocab, max_chars=TrainConfig.__dataclass_fields__["tokenizer_chars"].default)
    shutil.rmtree(ours_tok, ignore_errors=True)
    ours.save(ours_tok)
    t1 = time.time()
    base = work / "nanochat-base"
    env = base_env(a.threads) | {"NANOCHAT_BASE_DIR": str(base)}
    code, out, _, _, _ = run([a.nanochat_python, "-m", "scripts.tok_train", f"--vocab-size={a.vocab}"],
                             cwd=Path(a.nanochat), env=env, timeout=3600, log=work / "logs" / "nanochat-tok_train.log")
    if code != 0:
        raise SystemExit(f"nanochat tok_train failed ({code}); see {work / 'logs' / 'nanochat-tok_train.log'}")
    with open(base / "tokenizer" / "tokenizer.pkl", "rb") as f:
        nc = pickle.load(f)  # the tiktoken Encoding nanochat's RustBPETokenizer wraps (encode = encode_ordinary)
    if nc.n_vocab != a.vocab:
        raise SystemExit(f"nanochat's tokenizer reached {nc.n_vocab:,} tokens on this corpus, not {a.vocab:,}")
    print(f"  tokenizers: ours {ours.vocab_size:,} ({t1 - t0:.1f}s), nanochat {nc.n_vocab:,} ({time.time() - t1:.1f}s)",
          flush=True)
    return ours, nc


def prepare(a, work: Path) -> dict:
    """Corpus where every document fits a row under both tokenizers, both tokenizers, the held-out documents."""
    from trainer.corpus import _pieces, stdlib_documents
    from trainer.settings import TrainConfig, tokenizer_name

    data, nc_data = work / "data", work / "nanochat-base" / "base_data_climbmix"
    cfg = TrainConfig(depth=4, vocab_size=a.vocab, data=str(data))
    ours_tok = work / "ours-store" / tokenizer_name(cfg)
    stamp_path = work / "corpus.json"
    want = {"corpus_chars": a.corpus_chars, "doc_chars": a.doc_chars, "shards": a.shards, "vocab": a.vocab,
            "seq": a.seq, "eval_bytes": a.eval_bytes, "python": sys.version, "nanochat": str(Path(a.nanochat).resolve())}
    if stamp_path.exists():
        stamp = json.loads(stamp_path.read_text())
        if (stamp.get("settings") == want and (ours_tok / "tokenizer.json").exists()
                and (work / "nanochat-base" / "tokenizer" / "token_bytes.pt").exists()):
            print(f"corpus and tokenizers: as built before ({stamp_path})", flush=True)
            return stamp | {"ours_tokenizer": str(ours_tok)}
    stamp_path.unlink(missing_ok=True)
    t0 = time.time()
    docs = stdlib_documents(a.corpus_chars, a.doc_chars)
    shard_docs = [docs[i * len(docs) // a.shards:(i + 1) * len(docs) // a.shards] for i in range(a.shards)]
    print(f"corpus: {len(docs):,} documents ≤ {a.doc_chars:,} chars, {sum(map(len, docs)):,} chars, "
          f"{a.shards} shards (the last held out) ({time.time() - t0:.1f}s)", flush=True)
    for rnd in range(1, 6):
        _write_shards(shard_docs, [data, nc_data])
        ours, nc = _train_tokenizers(a, work, data, ours_tok)
        too_long, lengths = 0, {"ours": [], "nanochat": []}
        for s, docs in enumerate(shard_docs):
            n_ours = [len(t) + 1 for t in ours.encode_batch(docs)]
            n_nc = [len(t) + 1 for t in nc.encode_ordinary_batch(docs, num_threads=a.threads)]
            lengths["ours"] += n_ours
            lengths["nanochat"] += n_nc
            fixed = []
            for doc, n1, n2 in zip(docs, n_ours, n_nc):
                n = max(n1, n2)
                if n <= a.seq:
                    fixed.append(doc)
                    continue
                too_long += 1
                limit = max(1, int(len(doc) * (a.seq - 1) / n * 0.9))
                fixed += [p for p in _pieces(doc, limit) if p.strip()]
            shard_docs[s] = fixed
        longest = {k: max(v) for k, v in lengths.items()}
        mean = {k: statistics.mean(v) for k, v in lengths.items()}
        print(f"  round {rnd}: tokens per document with BOS: max ours {longest['ours']}, nanochat "
              f"{longest['nanochat']} (mean {mean['ours']:.1f} / {mean['nanochat']:.1f}); seq {a.seq}; "
              f"{too_long} documents longer, {'cut again' if too_long else 'none'}", flush=True)
        if not too_long:
            break
    else:
        raise SystemExit("documents still longer than a row after 5 rounds; lower --doc-chars")
    held_out, n_bytes = [], 0
    for doc in shard_docs[-1]:
        if n_bytes >= a.eval_bytes:
            break
        held_out.append(doc)
        n_bytes += len(doc.encode("utf-8"))
    (work / "eval_docs.json").write_text(json.dumps(held_out))
    chars, n_val = [sum(map(len, d)) for d in shard_docs], len(shard_docs[-1])
    stamp = {"settings": want, "rounds": rnd, "documents": sum(map(len, shard_docs)), "train_chars": sum(chars[:-1]),
             "val_chars": chars[-1], "max_tokens_with_bos": longest, "mean_tokens_with_bos": mean,
             "train_tokens": {k: sum(v[:-n_val]) - (len(v) - n_val) for k, v in lengths.items()},  # BOS excluded
             "eval_docs": len(held_out), "eval_bytes": n_bytes}
    stamp_path.write_text(json.dumps(stamp, indent=1))
    print(f"  held out for the common evaluator: {len(held_out):,} documents, {n_bytes:,} bytes", flush=True)
    return stamp | {"ours_tokenizer": str(ours_tok)}


# -- runs ----------------------------------------------------------------------------------------------------------
def nanochat(who: str) -> bool:
    return who.split("_", 1)[0] == "nanochat"


def nanochat_flags(a, who: str) -> list[str]:
    """`nanochat_lr1`: its base learning rates as the effective ones (it scales them by √(total batch / 2^19));
    `nanochat_lr1_wd0`: and no weight decay; `nanochat_lr1_oursched`: and our LR schedule (no warmup, the last
    20% linear to 0)."""
    if who == "nanochat":
        return []
    s = math.sqrt(a.total_batch / NC_B_REF)
    flags = [f"--{k}-lr={v / s!r}" for k, v in NC_LRS.items()]
    if who == "nanochat_lr1_wd0":
        flags.append("--weight-decay=0.0")
    if who == "nanochat_lr1_oursched":
        flags += ["--warmup-steps=0", "--warmdown-ratio=0.2", "--final-lr-frac=0.0"]
    return flags


NANOCHAT_VARIANTS = ("default", "lr1", "lr1_wd0", "lr1_oursched") + tuple(f"lr1_{a}" for a in NANOCHAT_ABLATIONS)


def ablation_env(who: str) -> dict:
    """`nanochat_lr1_<ablation>`: lr1 with one of NANOCHAT_ABLATIONS' changes, in training and evaluation."""
    name = who.rsplit("_", 1)[-1]
    return {"NANOCHAT_ABLATION_CODE": NANOCHAT_ABLATIONS[name]} if nanochat(who) and name in NANOCHAT_ABLATIONS else {}


OUR_VARIANTS = ("default", "ncsched", "nclr", "nclr1", "ve")


def variant_flags(a, variant: str) -> list[str]:
    if variant == "default":
        return []
    if variant == "ve":  # nanochat's value embeddings, everything else ours
        return ["--value-embeddings"]
    flags = ["--warmup-ratio", repr(min(1.0, NC_WARMUP_STEPS / a.steps)), "--warmdown-ratio", repr(NC_WARMDOWN),
             "--final-lr-frac", repr(NC_FINAL_LR)]
    if variant in ("nclr", "nclr1"):  # nclr1: nanochat's base rates as the effective ones, like nanochat_lr1
        s = math.sqrt(a.total_batch / NC_B_REF) if variant == "nclr" else 1.0
        flags += ["--matrix-lr", repr(NC_LRS["matrix"] * s), "--embedding-lr", repr(NC_LRS["embedding"] * s),
                  "--unembedding-lr", repr(NC_LRS["unembedding"] * s)]
    return flags


def train_cmd(a, work: Path, who: str, depth: int, seed: int, tag: str, prep: dict) -> tuple[list[str], dict, Path]:
    if nanochat(who):
        cmd = [a.nanochat_python, "-c", NANOCHAT_SEED_SHIM, str(seed), "--run=dummy", "--device-type=cpu",
               f"--depth={depth}", f"--head-dim={HEAD_DIM}", "--window-pattern=L", f"--max-seq-len={a.seq}",
               f"--device-batch-size={a.device_batch}", f"--total-batch-size={a.total_batch}",
               f"--num-iterations={a.steps}", f"--eval-every={a.eval_every}", f"--eval-tokens={a.eval_tokens}",
               "--core-metric-every=-1", "--sample-every=-1", f"--model-tag={tag}", *nanochat_flags(a, who)]
        env = base_env(a.threads) | {"NANOCHAT_BASE_DIR": str(work / "nanochat-base"), "NANOCHAT_DTYPE": "float32"}
        env |= ablation_env(who)
        if not a.compile:
            env["TORCHDYNAMO_DISABLE"] = "1"
        return cmd, env, Path(a.nanochat)
    variant = who.split("_", 1)[1] if "_" in who else "default"
    cmd = [str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable,
           "-m", "trainer.train", "--depth", str(depth), "--head-dim", str(HEAD_DIM), "--seq-len", str(a.seq),
           "--device-batch", str(a.device_batch), "--total-batch", str(a.total_batch), "--vocab-size", str(a.vocab),
           "--iterations", str(a.steps), "--device", "cpu", "--dtype", "fp32", "--threads", str(a.threads),
           "--compile" if a.compile else "--no-compile", "--seed", str(seed), "--data", str(work / "data"),
           "--data-dir", str(work / "ours-store"), "--tokenizer-dir", prep["ours_tokenizer"],
           "--eval-every", str(a.eval_every), "--eval-tokens", str(a.eval_tokens), "--checkpoint-every", "0",
           "--keep-checkpoints", "1", "--run-dir", str(work / "runs" / tag), *variant_flags(a, variant)]
    return cmd, base_env(a.threads) | {"PYTHONPATH": str(REPO)}, REPO


def parse_run(who: str, out: str) -> dict:
    if nanochat(who):
        dts, info = parse_nanochat(out)
        curve = [(int(s), float(v)) for s, v in NC_EVAL.findall(out)]
        m = NC_TOKENS.search(out)
        info["tokens"] = int(m[1].replace(",", "")) if m else None
        m = NC_LR_SCALE.search(out)
        info["lr_scale"] = float(m[1]) if m else 1.0
        m = NC_WD.search(out)
        info["muon_weight_decay"] = float(m[2]) if m else None
        info["own_val_bpb"] = curve[-1][1] if curve else None
    else:
        dts, info = parse_ours(out)
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        curve = [(e["step"], e["val_bpb"]) for e in events if e.get("event") == "eval"]
        start = next((e for e in events if e.get("event") == "start"), {})
        result = next((e for e in events if e.get("event") == "result"), {})
        info["tokens"] = start.get("tokens")
        info["own_val_bpb"] = result.get("val_bpb")
        info["status"] = result.get("status")
        info["gzip_bpb"] = result.get("gzip_bpb")
    info["curve"] = curve
    info["step_ms"] = dts
    info["median_step_ms"] = round(statistics.median(dts[1:] or dts), 1) if dts else None
    return info


def evaluate(a, work: Path, who: str, tag: str, prep: dict) -> dict:
    out = work / "records" / f"{tag}.eval.json"
    cmd = [a.nanochat_python if nanochat(who) else str(REPO / ".venv" / "bin" / "python"), str(Path(__file__)),
           "--eval-worker", "nanochat" if nanochat(who) else "ours", "--docs", str(work / "eval_docs.json"),
           "--seq", str(a.seq), "--device-batch", str(a.device_batch), "--threads", str(a.threads),
           "--out", str(out), "--nanochat", str(Path(a.nanochat).resolve())]
    if nanochat(who):
        cmd += ["--checkpoint", str(work / "nanochat-base" / "base_checkpoints" / tag)]
        env = base_env(a.threads) | {"NANOCHAT_BASE_DIR": str(work / "nanochat-base"), "NANOCHAT_DTYPE": "float32",
                                     "TORCHDYNAMO_DISABLE": "1"} | ablation_env(who)
    else:
        cmd += ["--checkpoint", str(work / "runs" / tag), "--tokenizer", prep["ours_tokenizer"]]
        env = base_env(a.threads) | {"PYTHONPATH": str(REPO)}
    log = work / "logs" / f"{tag}.eval.log"
    code, text, wall, _, _ = run(cmd, cwd=Path(a.nanochat) if nanochat(who) else REPO, env=env,
                                 timeout=a.timeout, log=log)
    if code != 0 or not out.exists():
        tail = " | ".join(text.strip().splitlines()[-3:])
        return {"error": f"common evaluator failed ({code}): {tail[-400:]}"}
    return json.loads(out.read_text()) | {"eval_wall_s": round(wall, 1)}


def fingerprint(a, who: str, depth: int, seed: int) -> dict:
    return {"who": who, "depth": depth, "seed": seed, "steps": a.steps, "vocab": a.vocab, "seq": a.seq,
            "device_batch": a.device_batch, "total_batch": a.total_batch, "eval_every": a.eval_every,
            "eval_tokens": a.eval_tokens, "compile": a.compile, "threads": a.threads, "corpus_chars": a.corpus_chars,
            "doc_chars": a.doc_chars, "shards": a.shards, "eval_bytes": a.eval_bytes}


def one_run(a, work: Path, who: str, depth: int, seed: int, prep: dict) -> dict:
    tag = f"{who}-d{depth}-s{seed}"
    rec_path = work / "records" / f"{tag}.json"
    fp = fingerprint(a, who, depth, seed)
    if rec_path.exists() and not a.force:
        rec = json.loads(rec_path.read_text())
        if rec.get("fingerprint") == fp and "error" not in rec:
            print(f"  {tag:<24} kept from an earlier run ({rec_path})", flush=True)
            return rec
    shutil.rmtree(work / "runs" / tag, ignore_errors=True)  # a fresh run, not a resume
    shutil.rmtree(work / "nanochat-base" / "base_checkpoints" / tag, ignore_errors=True)
    cmd, env, cwd = train_cmd(a, work, who, depth, seed, tag, prep)
    log = work / "logs" / f"{tag}.log"
    load_before = load1()
    code, out, wall, rss, others = run(cmd, cwd=cwd, env=env, timeout=a.timeout, log=log)
    rec = {"tag": tag, "trainer": who, "depth": depth, "seed": seed, "fingerprint": fp, "exit_code": code,
           "wall_s": round(wall, 1), "peak_rss_gib": round(rss, 2), "other_cpu": round(others, 3),
           "load_before": load_before, "load_after": load1(), "log": str(log), "command": cmd,
           **parse_run(who, out)}
    if code != 0 or len(rec["step_ms"]) < a.steps:
        tail = " | ".join(out.strip().splitlines()[-3:])
        rec["error"] = f"training failed (exit {code}, {len(rec['step_ms'])} steps): {tail[-400:]}"
        print(f"  {tag:<24} FAILED: {rec['error'][:300]}", flush=True)
        return rec
    ev = evaluate(a, work, who, tag, prep)
    if "error" in ev:
        rec["error"] = ev["error"]
        print(f"  {tag:<24} FAILED: {rec['error'][:300]}", flush=True)
        return rec
    rec["common"] = ev
    own = rec.get("own_val_bpb")
    print(f"  {tag:<24} val_bpb {ev['val_bpb']:.4f} (common; own {own if own is None else f'{own:.4f}'}, "
          f"own batches from the checkpoint {ev['own_batches']['val_bpb']:.4f}) | "
          f"{rec['tokens']:,} tokens | median step {rec['median_step_ms']:.0f} ms | train wall {wall:.0f}s, "
          f"eval {ev['eval_wall_s']:.0f}s | params {ev['params']:,} | peak RSS {rss:.2f} GiB | others' CPU "
          f"{others:.0%}", flush=True)
    rec_path.write_text(json.dumps(rec, indent=1))
    return rec


# -- report --------------------------------------------------------------------------------------------------------
def _fmt(x, nd=4):
    return "—" if x is None else f"{x:.{nd}f}"


def summarise(runs: list[dict], trainers: list[str], depths: list[int]) -> list[dict]:
    rows = []
    for depth in depths:
        for who in trainers:
            ok = [r for r in runs if r["trainer"] == who and r["depth"] == depth and "common" in r]
            if not ok:
                continue
            v = [r["common"]["val_bpb"] for r in ok]
            own = [r["own_val_bpb"] for r in ok if r.get("own_val_bpb") is not None]
            rows.append({"trainer": who, "depth": depth, "seeds": [r["seed"] for r in ok], "val_bpb": v,
                         "mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else None,
                         "min": min(v), "max": max(v), "own_mean": statistics.mean(own) if own else None,
                         "tokens": ok[0]["tokens"], "params": ok[0]["common"]["params"],
                         "wall_mean_s": statistics.mean(r["wall_s"] for r in ok),
                         "median_step_ms": statistics.median(r["median_step_ms"] for r in ok)})
    return rows


def markdown(a, prep: dict, runs: list[dict], summary: list[dict], trainers: list[str]) -> str:
    lines = [f"# nanochat vs ours at equal tokens: val_bpb ({time.strftime('%Y-%m-%d %H:%M')}, {cpu_model()})", "",
             f"seq {a.seq}, device batch {a.device_batch}, total batch {a.total_batch:,}, {a.steps} steps "
             f"({a.steps * a.total_batch:,} tokens), vocab {a.vocab:,}, fp32, {'compiled' if a.compile else 'eager'}, "
             f"{a.threads} threads. Corpus: {prep['documents']:,} stdlib documents, {prep['train_chars']:,} training "
             f"chars; tokens per document with BOS ≤ {max(prep['max_tokens_with_bos'].values())} (ours "
             f"{prep['max_tokens_with_bos']['ours']}, nanochat {prep['max_tokens_with_bos']['nanochat']}) ≤ seq. "
             f"Common evaluator: {prep['eval_docs']:,} held-out documents, {prep['eval_bytes']:,} bytes.", "",
             "| trainer | depth | params | val_bpb mean | std | min–max | per seed | own val_bpb mean | tokens | "
             "median step | train wall (mean) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        per = " ".join(f"{v:.4f}" for v in s["val_bpb"])
        lines.append(f"| {s['trainer']} | {s['depth']} | {s['params']:,} | **{s['mean']:.4f}** | {_fmt(s['std'])} | "
                     f"{s['min']:.4f}–{s['max']:.4f} | {per} | {_fmt(s['own_mean'])} | {s['tokens']:,} | "
                     f"{s['median_step_ms']:.0f} ms | {s['wall_mean_s'] / 60:.1f} min |")
    lines += ["", "Own vs common evaluator, per run (own: the trainer's last val_bpb on its own validation batches):", "",
              "| run | common | own (reported) | own batches, from the checkpoint | own − common | bytes/token: common "
              "docs / own batches | common eval tokens | common eval wall |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "common" in r:
            c, own, again = r["common"], r.get("own_val_bpb"), r["common"]["own_batches"]
            lines.append(f"| {r['tag']} | {c['val_bpb']:.4f} | {_fmt(own)} | {again['val_bpb']:.4f} | "
                         f"{_fmt(None if own is None else own - c['val_bpb'])} | {c['bytes_per_token']:.3f} / "
                         f"{again['bytes_per_token']:.3f} | {c['tokens']:,} | {c['eval_wall_s']:.0f}s |")
        else:
            lines.append(f"| {r['tag']} | failed: {r.get('error', '')[:120]} | | | | | | |")
    for depth in sorted({r["depth"] for r in runs}):
        have = [w for w in trainers if any(r["trainer"] == w and r["depth"] == depth and r.get("curve") for r in runs)]
        steps = sorted({s for r in runs if r["depth"] == depth for s, _ in r.get("curve", [])})
        if not have or not steps:
            continue
        lines += ["", f"Curves, depth {depth}: each trainer's own val_bpb at its eval steps, mean over seeds:", "",
                  "| step | " + " | ".join(have) + " |", "|---" * (len(have) + 1) + "|"]
        for st in steps:
            cells = []
            for w in have:
                vals = [v for r in runs if r["trainer"] == w and r["depth"] == depth for s, v in r.get("curve", [])
                        if s == st]
                cells.append(_fmt(statistics.mean(vals)) if vals else "—")
            lines.append(f"| {st} | " + " | ".join(cells) + " |")
    nc = [r for r in runs if r["trainer"] == "nanochat" and r.get("lr_scale")]
    lines += ["", "Defaults that differ (ours / nanochat / what a variant of ours sets):", "",
              "| | ours | nanochat | our variant |", "|---|---|---|---|"]
    lines += [f"| {n} | {o} | {c} | {v} |" for n, o, c, v in SCHEDULE_NOTES]
    for depth in sorted({r["depth"] for r in nc}):
        r = next(r for r in nc if r["depth"] == depth)
        lines.append(f"\nnanochat at depth {depth} printed: LR scale {r['lr_scale']:g}, Muon weight decay "
                     f"{_fmt(r.get('muon_weight_decay'), 4)}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanochat", help="nanochat work tree (holds scripts/base_train.py)")
    p.add_argument("--nanochat-python", help="interpreter that runs nanochat")
    p.add_argument("--work", default="/tmp/nanochat-quality", help="corpus, tokenizers, runs, logs, quality.json/.md")
    p.add_argument("--depths", default="4,6")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps of every run (tokens = steps × total batch; "
                   "1,000 × 8,192 ≈ one pass over the ≈8.2M training tokens at vocab 4,096)")
    p.add_argument("--vocab", type=int, default=4096, help="tokenizer and model vocabulary, special tokens included")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--device-batch", type=int, default=16)
    p.add_argument("--total-batch", type=int, default=8192, help="tokens per optimizer step")
    p.add_argument("--eval-every", type=int, default=0, help="steps between in-training evals (0: steps / 10)")
    p.add_argument("--eval-tokens", type=int, default=0, help="tokens per in-training eval (0: 16 device batches)")
    p.add_argument("--eval-bytes", type=int, default=500_000, help="UTF-8 bytes of held-out documents for the common "
                   "evaluator")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile both (nanochat always compiles; off = TORCHDYNAMO_DISABLE=1)")
    p.add_argument("--only", choices=["ours", "nanochat"], help="run one trainer only")
    p.add_argument("--variants", default="default,ncsched", help=f"our variants: {', '.join(OUR_VARIANTS)}")
    p.add_argument("--nanochat-variants", default="default",
                   help="nanochat's: default, lr1 (its base learning rates unscaled by the batch), lr1_wd0 (and no "
                   "weight decay), lr1_oursched (and our LR schedule), lr1_nove (and no value embeddings), "
                   "lr1_nolambda (and no residual/x0 scalars), lr1_nosmear, lr1_nobackout, lr1_ns (Newton–Schulz "
                   "in place of Polar Express)")
    p.add_argument("--corpus-chars", type=int, default=32_000_000, help="stdlib characters (≈31.5M is all of it)")
    p.add_argument("--doc-chars", type=int, default=0, help="first cut of documents, characters (0: 2 × seq)")
    p.add_argument("--shards", type=int, default=8, help="parquet shards, the last held out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per training run")
    p.add_argument("--force", action="store_true", help="run again what WORK/records already holds")
    # the common evaluator's worker mode (the script calls itself under each trainer's interpreter)
    p.add_argument("--eval-worker", choices=["ours", "nanochat"], help=argparse.SUPPRESS)
    p.add_argument("--docs", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.eval_worker:
        return worker(a)
    if not (a.nanochat and a.nanochat_python):
        p.error("--nanochat and --nanochat-python are required (the tokenizer and corpus check need nanochat's)")
    depths, seeds = [int(x) for x in a.depths.split(",")], [int(x) for x in a.seeds.split(",")]
    variants = [v for v in a.variants.split(",") if v]
    if set(variants) - set(OUR_VARIANTS):
        p.error(f"--variants: unknown {sorted(set(variants) - set(OUR_VARIANTS))}")
    for d in depths:
        if (64 * d) % HEAD_DIM:
            p.error(f"depth {d}: model_dim {64 * d} is no multiple of {HEAD_DIM}; nanochat rounds it up, ours does not")
    if a.total_batch % (a.device_batch * a.seq):
        p.error("--total-batch must be a multiple of device batch × seq")
    a.doc_chars = a.doc_chars or 2 * a.seq
    a.eval_every = a.eval_every or max(1, a.steps // 10)
    a.eval_tokens = a.eval_tokens or 16 * a.device_batch * a.seq
    if a.eval_tokens < a.device_batch * a.seq:
        p.error("--eval-tokens must be at least one device batch × seq (nanochat evaluates eval_tokens // (B·T) batches)")
    ours = [f"ours_{v}" if v != "default" else "ours" for v in variants]
    theirs = [f"nanochat_{v}" if v != "default" else "nanochat" for v in a.nanochat_variants.split(",") if v]
    if set(theirs) - {f"nanochat_{v}" if v != "default" else "nanochat" for v in NANOCHAT_VARIANTS}:
        p.error(f"--nanochat-variants: unknown {a.nanochat_variants}")
    trainers = theirs * (a.only != "ours") + ours * (a.only != "nanochat")

    work = Path(a.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "records").mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    import torch

    print(time.strftime("%Y-%m-%d %H:%M:%S"), f"| {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load {load1():.2f}", flush=True)
    prep = prepare(a, work)
    print(f"runs: {trainers} × depths {depths} × seeds {seeds}: {a.steps} steps × {a.total_batch:,} = "
          f"{a.steps * a.total_batch:,} tokens each; eval every {a.eval_every} steps on {a.eval_tokens:,} tokens",
          flush=True)
    runs = []
    for depth in depths:
        for i, seed in enumerate(seeds):
            order = trainers if i % 2 == 0 else trainers[::-1]
            for who in order:
                runs.append(one_run(a, work, who, depth, seed, prep))
                summary = summarise(runs, trainers, depths)
                (work / "quality.json").write_text(json.dumps(
                    {"config": vars(a), "cpu": cpu_model(), "torch": torch.__version__, "corpus": prep,
                     "schedule_notes": SCHEDULE_NOTES, "summary": summary, "runs": runs}, indent=1))
    md = markdown(a, prep, runs, summarise(runs, trainers, depths), trainers)
    (work / "quality.md").write_text(md)
    print("\n" + md)
    print(f"per-run details: {work / 'quality.json'}; table: {work / 'quality.md'}")


if __name__ == "__main__":
    main()
