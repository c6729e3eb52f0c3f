"""Pretrain the GPT (DESIGN.md §3).

    python -m trainer.train --depth 4 --iterations 100 ...                    # one process (CPU or 1 GPU)
    torchrun --nproc_per_node 8 -m trainer.train --depth 20 --ratio 20 ...    # DDP, NCCL or gloo

Events (docs/events.md) go to stdout as JSON lines from rank 0, human lines to stderr; the result is
also written to RUN_DIR/result.json. Exit codes: 0 ok, 1 crashed, 2 bad command line, 3 oom,
4 over_budget, 130 cancelled. Flags: docs/trainer.md.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import signal
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from trainer.arithmetic import (DEFAULT_HEAD_DIM, DEFAULT_SEQ_LEN, DEFAULT_TOTAL_BATCH, DEFAULT_VOCAB, ModelShape,
                                ShapeError, grad_accum_steps, iterations_for)
from trainer.events import EXIT_CODES, emit, emit_result

DEFAULT_RATIO = 20.0
HF_SHARDS_TOTAL = 1823  # shards in karpathy/fineweb-edu-100b-shuffle; the last one is held out
HF_TOKENS_PER_SHARD = 250e6 / 5.0  # ~250M characters per shard at a pessimistic 5 characters/token


class UsageError(ValueError):
    """Settings that cannot run; one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the whole usage otherwise)
        raise UsageError(message)


def positive(kind):
    def parse(text):
        try:
            value = kind(float(text)) if kind is int and "e" in text.lower() else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def fraction(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m trainer.train", description="Pretrain a nanochat-style GPT.")
    m = p.add_argument_group("model")
    m.add_argument("--depth", type=positive(int), required=True, help="layers; model_dim = 64·depth")
    m.add_argument("--vocab-size", type=positive(int), default=DEFAULT_VOCAB)
    m.add_argument("--seq-len", type=positive(int), default=DEFAULT_SEQ_LEN)
    m.add_argument("--head-dim", type=positive(int), default=DEFAULT_HEAD_DIM)
    b = p.add_argument_group("batch and horizon")
    b.add_argument("--device-batch", type=positive(int), default=32, help="sequences per device per micro-step")
    b.add_argument("--total-batch", type=positive(int), default=DEFAULT_TOTAL_BATCH, help="tokens per optimizer step")
    h = b.add_mutually_exclusive_group()
    h.add_argument("--iterations", type=positive(int), help="optimizer steps")
    h.add_argument("--ratio", type=positive(float), help=f"tokens = ratio × params (default {DEFAULT_RATIO:g})")
    h.add_argument("--target-flops", type=positive(float), help="training FLOPs = flops_per_token × tokens")
    o = p.add_argument_group("optimizer")
    o.add_argument("--matrix-lr", type=positive(float), default=0.02, help="Muon, block matrices")
    o.add_argument("--embedding-lr", type=positive(float), default=0.2, help="AdamW, × (d/768)^-0.5")
    o.add_argument("--unembedding-lr", type=positive(float), default=0.004, help="AdamW head, × (d/768)^-0.5")
    o.add_argument("--warmup-ratio", type=fraction, default=0.0)
    o.add_argument("--warmdown-ratio", type=fraction, default=0.2)
    o.add_argument("--final-lr-frac", type=fraction, default=0.0)
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-every", type=int, default=250, help="steps between val_bpb evaluations (≤0: only at the end)")
    e.add_argument("--eval-tokens", type=positive(int), default=20 * DEFAULT_TOTAL_BATCH)
    r = p.add_argument_group("run")
    r.add_argument("--run-dir", default="run", help="checkpoints and result.json go here")
    r.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (≤0: only at the end)")
    r.add_argument("--keep-checkpoints", type=int, default=2, help="newest complete checkpoints kept (0: all)")
    r.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --run-dir, if any")
    r.add_argument("--probe", type=positive(int), metavar="N", help="time N steps: no eval, no checkpoints")
    r.add_argument("--probe-data", choices=("synthetic", "real"), default="synthetic")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-cost", type=positive(float), help="USD; stop (checkpoint, over_budget) when reached")
    r.add_argument("--price-per-hour", type=positive(float), help="USD per hour for this process group")
    r.add_argument("--wandb-project")
    r.add_argument("--run-name", default=None)
    s = p.add_argument_group("system")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    s.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA, off for CPU")
    s.add_argument("--fused-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="chunked head+softcap+loss (default: on for CPU, off for CUDA)")
    s.add_argument("--threads", type=positive(int), help="torch threads per process (default: cores / local processes)")
    s.add_argument("--memory-limit-gib", type=positive(float), help="cap memory (RLIMIT_AS on CPU, allocator share on CUDA)")
    d = p.add_argument_group("data")
    d.add_argument("--data-dir", default="data")
    d.add_argument("--data-source", choices=("local", "hf", "stdlib", "synthetic"), default="local")
    d.add_argument("--data-url", default=None, help="hf: URL template with {index} (default: FineWeb-EDU on Hugging Face)")
    d.add_argument("--shards", type=int, help="hf: shards to fetch, the validation shard included (≥2)")
    d.add_argument("--val-shard", type=int, default=HF_SHARDS_TOTAL - 1, help="hf: index of the held-out shard")
    d.add_argument("--tokenizer-dir", help="default: DATA_DIR/tokenizer_VOCAB; trained there if missing")
    d.add_argument("--tokenizer-chars", type=positive(int), default=2_000_000_000)
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.max_cost is not None and args.price_per_hour is None:
        raise UsageError("--max-cost needs --price-per-hour")
    if args.shards is not None and args.shards < 2:
        raise UsageError(f"--shards must be at least 2 (one is held out for validation), got {args.shards}")
    if args.keep_checkpoints < 0:
        raise UsageError(f"--keep-checkpoints must be 0 or more, got {args.keep_checkpoints}")
    if args.iterations is None and args.ratio is None and args.target_flops is None:
        args.ratio = DEFAULT_RATIO
    return args


# ------------------------------------------------------------------------------------------------
class Stop:
    """SIGINT/SIGTERM: inside the loop, finish the step, checkpoint, exit 130; before it, stop now."""
    requested = False
    in_loop = False

    @classmethod
    def handler(cls, signum, frame):
        if not cls.in_loop:
            raise KeyboardInterrupt
        cls.requested = True


class Run:
    def __init__(self, args):
        self.args = args
        self.t_start = time.time()
        self.run_dir = Path(args.run_dir)
        self.steps = 0
        self.loss = None
        self.val_bpb = None
        self.step_ms: list[float] = []
        self.eval_seconds = 0.0  # in this process: with the steps, what a wall-time prediction is made of
        self.device = None
        self.wall_before = 0.0  # wall seconds of earlier segments of a resumed run
        self.mfu = None

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self):
        import torch

        from trainer import common
        from trainer.common import dist_env, log

        args = self.args
        self.env = env = dist_env()
        common.set_master(env.master)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda but torch sees no CUDA device")
        kind = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.device = device = torch.device(kind, env.local_rank) if kind == "cuda" else torch.device("cpu")
        if kind == "cuda":
            torch.cuda.set_device(device)
            torch.set_float32_matmul_precision("high")
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        self.threads = args.threads or max(1, cores // env.local_world_size)
        torch.set_num_threads(self.threads)
        self.dtype = {"auto": "bf16" if kind == "cuda" else "fp32"}.get(args.dtype, args.dtype)
        self.compile = args.compile if args.compile is not None else kind == "cuda"
        self.fused_loss = args.fused_loss if args.fused_loss is not None else kind == "cpu"
        self.probe = args.probe is not None
        common.init_distributed(env, kind)

        # shape, batch split and horizon: the arithmetic module's numbers, refused with its message
        try:
            self.shape = shape = ModelShape(args.depth, args.vocab_size, args.seq_len, args.head_dim)
            self.grad_accum = grad_accum_steps(args.total_batch, args.device_batch, args.seq_len, env.world_size)
            self.iterations = args.probe if self.probe else iterations_for(
                shape.params, args.total_batch, ratio=args.ratio, iterations=args.iterations,
                target_flops=args.target_flops, flops_per_token=shape.flops_per_token)
        except ShapeError as e:
            raise UsageError(str(e)) from None
        self.tokens = self.iterations * args.total_batch
        self.name = common.device_name(device)
        self.peak = common.peak_flops(self.name) if kind == "cuda" else None
        log(f"device: {self.name} ({kind}), world size {env.world_size}, {self.threads} threads/process, "
            f"dtype {self.dtype}, compile {'on' if self.compile else 'off'}, fused loss {'on' if self.fused_loss else 'off'}")
        log(f"model: depth {shape.depth}, model_dim {shape.model_dim} = 64·{shape.depth}, {shape.n_head} heads × "
            f"{shape.actual_head_dim}, vocab {shape.vocab_size:,}, seq_len {shape.seq_len:,}")
        log(f"params: {shape.params:,} = 2·{shape.vocab_size:,}·{shape.model_dim} + 12·{shape.depth}·{shape.model_dim}² "
            f"(matrices {shape.matrix_params:,}, embedding {shape.embedding_params:,}, head {shape.head_params:,})")
        log(f"FLOPs/token: {shape.flops_per_token:,} = 6·(params − embedding) + 12·L·heads·head_dim·T")
        log(f"batch: {args.total_batch:,} tokens/step = {args.device_batch} seq × {args.seq_len:,} tokens × "
            f"{env.world_size} ranks × {self.grad_accum} micro-steps")
        how = ("probe" if self.probe else "--iterations" if args.iterations else
               f"ratio {args.ratio:g} × {shape.params:,} params / {args.total_batch:,}" if args.ratio else
               f"{args.target_flops:.4g} FLOPs / ({shape.flops_per_token:,} · {args.total_batch:,})")
        log(f"horizon: {self.iterations:,} steps ({how}), {self.tokens:,} tokens "
            f"(tokens:params {self.tokens / shape.params:.2f}), {self.tokens * shape.flops_per_token:.4e} FLOPs")
        log(f"peak dense bf16: {f'{self.peak / 1e12:g} TFLOP/s per device' if self.peak else 'unknown (MFU reported as null)'}")

        self.setup_data()
        if args.memory_limit_gib:
            log(common.limit_memory(args.memory_limit_gib, device))
        self.setup_model()
        self.setup_resume()
        self.setup_loaders()
        if args.wandb_project and env.master:
            self.setup_wandb()

    def setup_data(self):
        from trainer.common import barrier, log

        args, env = self.args, self.env
        self.synthetic = args.data_source == "synthetic" or (self.probe and args.probe_data == "synthetic")
        if self.synthetic:
            log("data: synthetic (arithmetic progressions mod vocab; 1 byte per token)")
            self.train_paths = self.val_paths = []
            self.tokenizer = None
            return
        from trainer.data import HF_URL, build_stdlib_corpus, download_shards, list_shards, split_shards

        data_dir = Path(args.data_dir)
        if args.data_source == "hf":
            n = args.shards or min(HF_SHARDS_TOTAL, math.ceil(self.tokens / HF_TOKENS_PER_SHARD) + 2)
            if not args.shards:
                log(f"shards: {n} = ⌈{self.tokens:,} tokens / {HF_TOKENS_PER_SHARD:,.0f} per shard⌉ + 1 spare + 1 validation")
            indices = list(range(n - 1)) + [args.val_shard]
            if env.local_rank == 0:
                log(f"data: downloading {n} shards into {data_dir} (train 0..{n - 2}, validation {args.val_shard})")
                t0 = time.time()
                download_shards(args.data_url or HF_URL, indices, data_dir)
                log(f"data: ready in {time.time() - t0:.1f}s")
            barrier()
            paths = [data_dir / f"shard_{i:05d}.parquet" for i in indices]
        elif args.data_source == "stdlib":
            if env.local_rank == 0:
                t0 = time.time()
                build_stdlib_corpus(data_dir)
                log(f"data: standard-library corpus in {data_dir} ({time.time() - t0:.1f}s)")
            barrier()
            paths = list_shards(data_dir)
        else:
            paths = list_shards(data_dir)
        self.train_paths, self.val_paths = split_shards(paths)
        log(f"data: {len(self.train_paths)} training shards, validation: {self.val_paths[0].name}")
        self.tokenizer = self.setup_tokenizer(data_dir)

    def setup_tokenizer(self, data_dir: Path):
        import torch.distributed as dist

        from trainer.common import barrier, log
        from trainer.data import iter_documents
        from trainer.tokenizer import META_FILE, RANKS_FILE, Tokenizer, chars_per_token, train_tokenizer

        args, env = self.args, self.env
        tok_dir = Path(args.tokenizer_dir or data_dir / f"tokenizer_{args.vocab_size}")
        if env.master and not (tok_dir / META_FILE).is_file():
            t0 = time.time()
            tok = train_tokenizer(iter_documents(self.train_paths), args.vocab_size, max_chars=args.tokenizer_chars)
            tok.save(tok_dir)
            log(f"tokenizer: trained {tok.vocab_size:,} tokens on ≤{args.tokenizer_chars:,} chars in {time.time() - t0:.1f}s → {tok_dir}")
        if env.distributed:  # nodes without a shared disk get rank 0's files
            files = [None]
            if env.master:
                files = [{n: (tok_dir / n).read_bytes() for n in (RANKS_FILE, META_FILE)}]
            dist.broadcast_object_list(files, src=0)
            if env.local_rank == 0 and not (tok_dir / META_FILE).is_file():
                tok_dir.mkdir(parents=True, exist_ok=True)
                for n in (RANKS_FILE, META_FILE):  # META last: it marks the directory complete
                    tmp = tok_dir / f".{n}.{os.getpid()}.tmp"
                    tmp.write_bytes(files[0][n])
                    os.replace(tmp, tok_dir / n)
            barrier()
        tok = Tokenizer.load(tok_dir)
        if tok.vocab_size != args.vocab_size:
            raise UsageError(f"tokenizer at {tok_dir} has {tok.vocab_size:,} tokens but --vocab-size is "
                             f"{args.vocab_size:,}; give another --tokenizer-dir or the matching --vocab-size")
        docs = []
        for doc in iter_documents(self.val_paths):
            docs.append(doc)
            if sum(map(len, docs)) > 2_000_000:
                break
        self.chars_per_token = chars_per_token(tok, docs)
        log(f"tokenizer: {tok_dir}, vocab {tok.vocab_size:,}, {self.chars_per_token:.3f} chars/token on validation text")
        self.report_data_size()
        return tok

    def report_data_size(self):
        """Characters in the training shards from parquet metadata (≈ bytes), so a second epoch shows."""
        import pyarrow.parquet as pq

        from trainer.common import log
        try:
            chars = 0
            for p in self.train_paths:
                if p.suffix == ".parquet":
                    md = pq.ParquetFile(p).metadata
                    chars += sum(md.row_group(i).column(0).total_uncompressed_size for i in range(md.num_row_groups))
                else:
                    chars += p.stat().st_size
        except Exception:
            return
        have = chars / self.chars_per_token
        epochs = self.tokens / have if have else float("inf")
        log(f"data size: ≈{chars:,} chars ≈ {have:,.0f} tokens in training shards; the run needs {self.tokens:,} "
            f"({epochs:.2f} epochs{'' if epochs <= 1 else ': the data repeats, fetch more shards'})")

    def setup_model(self):
        import torch

        from trainer.common import log
        from trainer.gpt import GPT
        from trainer.optim import build_optimizers, compile_newton_schulz, dmodel_lr_scale

        args = self.args
        torch.manual_seed(args.seed)
        with self.device:
            model = GPT(self.shape, fused_loss=self.fused_loss)
            model.init_weights()
        n = sum(p.numel() for p in model.parameters())
        assert n == self.shape.params, f"model has {n:,} parameters, ModelShape says {self.shape.params:,}"
        self.model = model
        self.optimizers = build_optimizers(model, matrix_lr=args.matrix_lr, embedding_lr=args.embedding_lr,
                                           unembedding_lr=args.unembedding_lr, device_type=self.device.type)
        scale = dmodel_lr_scale(self.shape.model_dim)
        log(f"optimizers: Muon lr {args.matrix_lr:g} (momentum 0.85→0.95 over 300 steps) on {self.shape.matrix_params:,} "
            f"params; AdamW betas (0.8, 0.95): embedding lr {args.embedding_lr:g}·{scale:.4f} = {args.embedding_lr * scale:.5f}, "
            f"head lr {args.unembedding_lr:g}·{scale:.4f} = {args.unembedding_lr * scale:.6f}  (scale = ({self.shape.model_dim}/768)^-0.5)")
        if self.compile:
            compile_newton_schulz()

    def setup_resume(self):
        import numpy as np
        import torch

        from trainer import checkpoint
        from trainer.common import log

        args, env = self.args, self.env
        self.start_step = 0
        self.resumed_from = None
        self.loader_state = None
        if self.probe:
            if args.resume:
                log("probe: --resume ignored")
            return
        if env.master:
            for p in checkpoint.sweep(self.run_dir):
                log(f"checkpoint: removed incomplete {p.name}")
        if not args.resume:
            return
        path = self.agree(checkpoint.latest(self.run_dir))
        if path is None:
            log(f"resume: no complete checkpoint in {checkpoint.root(self.run_dir)}; starting fresh")
            return
        ck = checkpoint.load(path, env.rank)
        st = ck["state"]
        mine = {"shape": self.shape.as_dict(), "total_batch": args.total_batch, "world_size": env.world_size,
                "synthetic": self.synthetic}
        theirs = {k: st.get(k) for k in mine}
        theirs["world_size"] = ck["world_size"]
        if theirs != mine:
            diff = ", ".join(f"{k} {theirs[k]} → {mine[k]}" for k in mine if theirs[k] != mine[k])
            raise UsageError(f"checkpoint {path} does not fit these settings ({diff}); use another --run-dir")
        self.model.load_state_dict(ck["model"])
        for opt, sd in zip(self.optimizers, ck["optim"]):
            opt.load_state_dict(sd)
        rs = ck["rank"]
        self.loader_state = rs["loader"]
        torch.set_rng_state(rs["rng"]["torch"])
        if self.device.type == "cuda" and rs["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(rs["rng"]["cuda"])
        random.setstate(rs["rng"]["python"])
        np.random.set_state(rs["rng"]["numpy"])
        self.start_step = self.steps = st["step"]
        self.val_bpb = st.get("val_bpb")
        self.loss = st.get("loss")
        self.wall_before = st.get("wall_seconds", 0.0)
        self.resumed_from = self.start_step
        log(f"resume: {path} (step {self.start_step:,} of {st.get('iterations')}, val_bpb {self.val_bpb}, "
            f"{self.wall_before:.0f}s of earlier wall time)")

    def agree(self, path):
        """Rank 0's choice of checkpoint for every rank (a shared run dir is required across nodes)."""
        if not self.env.distributed:
            return path
        import torch.distributed as dist
        box = [str(path) if path else None]
        dist.broadcast_object_list(box, src=0)
        return Path(box[0]) if box[0] else None

    def setup_loaders(self):
        import torch

        from trainer.common import SyntheticLoader

        args, env = self.args, self.env
        if self.synthetic:
            self.train_loader = SyntheticLoader(args.vocab_size, args.device_batch, args.seq_len, rank=env.rank,
                                                world_size=env.world_size, grad_accum=self.grad_accum, seed=args.seed,
                                                state=self.loader_state)
            self.token_bytes = torch.ones(args.vocab_size, dtype=torch.int64, device=self.device)
        else:
            from trainer.data import TokenLoader
            self.train_loader = TokenLoader(self.train_paths, self.tokenizer, args.device_batch, args.seq_len,
                                            rank=env.rank, world_size=env.world_size, seed=args.seed,
                                            state=self.loader_state, threads=max(1, self.threads))
            self.token_bytes = torch.tensor(self.tokenizer.token_bytes(), dtype=torch.int64, device=self.device)
        self.eval_steps = max(1, args.eval_tokens // (args.device_batch * args.seq_len * env.world_size))
        self.val_cache = None

    def setup_wandb(self):
        from trainer.common import log
        try:
            import wandb
        except ImportError:
            log("wandb: not importable; W&B logging off")
            self.wandb = None
            return
        self.wandb = wandb.init(project=self.args.wandb_project, name=self.args.run_name, config=self.config())
        from trainer.events import emit
        emit("wandb", url=getattr(self.wandb, "url", None), project=self.args.wandb_project)  # for the ledger

    # -- pieces of the loop -----------------------------------------------------------------------------
    def config(self) -> dict:
        return {**vars(self.args), "dtype_resolved": self.dtype, "compile_resolved": self.compile,
                "fused_loss_resolved": self.fused_loss, "threads": self.threads, "grad_accum": self.grad_accum,
                "synthetic_data": self.synthetic}

    def autocast(self):
        import torch
        if self.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def to_device(self, x, y):
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x, y

    def val_batches(self):
        """The fixed validation tokens: read once, then reused by every evaluation."""
        if self.val_cache is None:
            from trainer.common import SyntheticLoader, log
            args, env = self.args, self.env
            if self.synthetic:
                loader = SyntheticLoader(args.vocab_size, args.device_batch, args.seq_len, rank=env.rank,
                                         world_size=env.world_size, seed=args.seed, split="val")
            else:
                from trainer.data import TokenLoader
                loader = TokenLoader(self.val_paths, self.tokenizer, args.device_batch, args.seq_len, rank=env.rank,
                                     world_size=env.world_size, seed=0, loop=False, threads=max(1, self.threads))
            self.val_cache = []
            try:
                for _ in range(self.eval_steps):
                    x, y = loader.next_batch()
                    self.val_cache.append((x.int(), y.int()))
            except StopIteration:
                log(f"eval: the validation shard holds only {len(self.val_cache)} of {self.eval_steps} batches per rank")
            finally:
                loader.close()
        return self.val_cache

    def evaluate(self) -> float:
        import torch
        import torch.distributed as dist

        nats = torch.zeros((), dtype=torch.float64, device=self.device)
        nbytes = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for x, y in self.val_batches():
                x, y = self.to_device(x.long(), y.long())
                with self.autocast():
                    loss = self.eval_model(x, y, reduction="none").view(-1)
                b = self.token_bytes[y.view(-1)]
                nats += (loss.double() * (b > 0)).sum()  # special-token targets (0 bytes) are left out
                nbytes += b.sum()
        if self.env.distributed:
            both = torch.stack([nats, nbytes])
            dist.all_reduce(both)
            nats, nbytes = both[0], both[1]
        return (nats / (math.log(2) * nbytes)).item() if nbytes.item() > 0 else float("nan")

    def rank_state(self) -> dict:
        import numpy as np
        import torch
        return {"loader": self.train_loader.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                        "python": random.getstate(), "numpy": np.random.get_state()}}

    def save_checkpoint(self):
        import torch.distributed as dist

        from trainer import checkpoint
        from trainer.common import log

        mine = self.rank_state()
        if self.env.distributed:
            states = [None] * self.env.world_size
            dist.all_gather_object(states, mine)
        else:
            states = [mine]
        path = None
        if self.env.master:
            t0 = time.time()
            state = {"step": self.steps, "iterations": self.iterations, "val_bpb": self.val_bpb, "loss": self.loss,
                     "wall_seconds": self.wall_before + time.time() - self.t_start, "shape": self.shape.as_dict(),
                     "total_batch": self.args.total_batch, "world_size": self.env.world_size,
                     "synthetic": self.synthetic, "config": self.config()}
            path = checkpoint.save(self.run_dir, self.steps, model_state=self.model.state_dict(),
                                   optim_states=[o.state_dict() for o in self.optimizers], rank_states=states,
                                   state=state, keep=self.args.keep_checkpoints)
            log(f"checkpoint: {path} ({time.time() - t0:.1f}s)")
            emit("checkpoint", step=self.steps, path=str(path))
        if self.env.distributed:
            dist.barrier()
        return path

    def over_budget(self) -> bool:
        a = self.args
        if a.max_cost is None:
            return False
        spent = (self.wall_before + time.time() - self.t_start) * a.price_per_hour / 3600
        return spent >= a.max_cost

    # -- the loop ----------------------------------------------------------------------------------------
    def train(self) -> str:
        import torch
        import torch.distributed as dist

        from trainer.common import log
        from trainer.optim import apply_schedule, lr_multiplier

        args, env, shape = self.args, self.env, self.shape
        model = self.model
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_model = torch.compile(model, dynamic=False) if self.compile else model
        self.eval_model = torch.compile(self.model, dynamic=False) if self.compile else self.model
        ddp = env.distributed

        if env.master:
            emit("start", mode="probe" if self.probe else "train", shape=shape.as_dict(), config=self.config(),
                 world_size=env.world_size, device=self.device.type, device_name=self.name, peak_flops=self.peak,
                 grad_accum=self.grad_accum, iterations=self.iterations, tokens=self.tokens,
                 total_flops=self.tokens * shape.flops_per_token, resumed_from_step=self.resumed_from)

        do_eval = not self.probe
        if do_eval and self.steps == 0 and args.eval_every > 0:
            self.run_eval()
        Stop.in_loop = True
        status = "ok"
        while self.steps < self.iterations:
            t0 = time.time()
            step = self.steps  # 0-based index of the step being taken
            loss_sum = torch.zeros((), device=self.device)
            for micro in range(self.grad_accum):
                x, y = self.to_device(*self.train_loader.next_batch())
                sync = nullcontext() if not ddp or micro == self.grad_accum - 1 else model.no_sync()
                with sync:
                    with self.autocast():
                        loss = self.train_model(x, y)
                    (loss / self.grad_accum).backward()
                loss_sum += loss.detach().float()
            lrm = lr_multiplier(step, self.iterations, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
            apply_schedule(self.optimizers, step, lrm)
            for opt in self.optimizers:
                opt.step()
            self.model.zero_grad(set_to_none=True)
            # one small collective per step: mean loss, and whether any rank must stop
            flags = torch.stack([loss_sum / self.grad_accum,
                                 torch.tensor(float(Stop.requested), device=self.device),
                                 torch.tensor(float(env.master and self.over_budget()), device=self.device)])
            if ddp:
                dist.all_reduce(flags)
            flags = flags.tolist()
            self.steps += 1
            self.loss = flags[0] / env.world_size
            dt = time.time() - t0
            self.step_ms.append(dt * 1000)
            self.log_step(dt, lrm)
            last = self.steps == self.iterations
            stop, broke = flags[1] > 0, flags[2] > 0
            if do_eval and (last or (args.eval_every > 0 and self.steps % args.eval_every == 0)) and not (stop or broke):
                self.run_eval()
            if stop or broke:
                status = "cancelled" if stop else "over_budget"
                log(f"{'stop requested' if stop else f'budget of ${args.max_cost:g} reached'} after step {self.steps}")
                break
            if (not self.probe and not last and args.checkpoint_every > 0
                    and self.steps % args.checkpoint_every == 0):
                self.save_checkpoint()
        if self.steps == self.iterations and do_eval and self.val_bpb is None:
            self.run_eval()  # a resumed run that had nothing left to do still reports val_bpb
        if not self.probe:
            self.save_checkpoint()
        Stop.in_loop = False
        return status

    def run_eval(self):
        from trainer.common import log
        t0 = time.time()
        self.val_bpb = self.evaluate()
        self.eval_seconds += time.time() - t0
        log(f"eval: step {self.steps:,} | val_bpb {self.val_bpb:.4f} | {time.time() - t0:.1f}s")
        if self.env.master:
            emit("eval", step=self.steps, val_bpb=self.val_bpb)
            if getattr(self, "wandb", None):
                self.wandb.log({"step": self.steps, "val_bpb": self.val_bpb})

    def timing(self):
        """Median step time after the first step of this process (compile and warm-up excluded)."""
        times = self.step_ms[1:] or self.step_ms
        return statistics.median(times) if times else None

    def log_step(self, dt, lrm):
        from trainer.common import log
        tps = self.args.total_batch / dt
        mfu = self.shape.flops_per_token * tps / (self.peak * self.env.world_size) if self.peak else None
        med = self.timing()
        eta = (self.iterations - self.steps) * med / 1000 if med else None
        elapsed = time.time() - self.t_start
        epoch = getattr(self.train_loader, "epoch", 0)
        log(f"step {self.steps:05d}/{self.iterations:05d} | loss {self.loss:.4f} | lrm {lrm:.3f} | {dt * 1000:.0f} ms | "
            f"{tps:,.0f} tok/s | mfu {f'{mfu:.1%}' if mfu is not None else 'n/a'} | epoch {epoch} | "
            f"elapsed {elapsed:.0f}s | eta {f'{eta:.0f}s' if eta is not None else '?'}")
        if self.env.master:
            emit("step", step=self.steps, iterations=self.iterations, loss=self.loss, lr_mult=lrm,
                 step_ms=round(dt * 1000, 3), tokens_per_second=round(tps, 1), mfu=mfu, elapsed_s=round(elapsed, 3),
                 eta_s=None if eta is None else round(eta, 1), epoch=epoch)
            if getattr(self, "wandb", None):
                self.wandb.log({"step": self.steps, "loss": self.loss, "lr_mult": lrm, "tokens_per_second": tps,
                                "mfu": mfu, "step_ms": dt * 1000})

    def summary(self, status: str, error: str | None = None) -> dict:
        from trainer.common import peak_memory_gib
        med = self.timing()
        tps = self.args.total_batch / (med / 1000) if med else None
        mfu = (self.shape.flops_per_token * tps / (self.peak * self.env.world_size)
               if tps and getattr(self, "peak", None) else None)
        peak = None
        if self.device is not None:
            try:
                peak = round(peak_memory_gib(self.device), 4)
            except Exception:
                pass
        return dict(status=status, steps=self.steps, val_bpb=self.val_bpb, loss=self.loss, mfu=mfu,
                    peak_memory_gib=peak, tokens_per_second=None if tps is None else round(tps, 1),
                    step_ms=None if med is None else round(med, 3),
                    step_ms_mean=round(statistics.mean(self.step_ms[1:]), 3) if len(self.step_ms) > 1 else None,
                    eval_seconds=round(self.eval_seconds, 3),
                    wall_seconds=round(time.time() - self.t_start, 3),
                    total_wall_seconds=round(self.wall_before + time.time() - self.t_start, 3), error=error)


def reduce_peak_memory(run: Run, record: dict) -> None:
    """Peak memory of the busiest rank (a collective: only on a healthy finish)."""
    import torch
    import torch.distributed as dist
    if run.env.distributed and record.get("peak_memory_gib") is not None:
        t = torch.tensor(record["peak_memory_gib"], dtype=torch.float64, device=run.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        record["peak_memory_gib"] = round(t.item(), 4)


def main(argv=None) -> int:
    # OpenMP threads that spin while waiting collapse (100x) when the CPU is shared; wait passively.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"trainer: error: {e}", file=sys.stderr, flush=True)
        return 2
    signal.signal(signal.SIGINT, Stop.handler)
    signal.signal(signal.SIGTERM, Stop.handler)
    run = Run(args)
    master = os.environ.get("RANK", "0") == "0"
    run_dir = run.run_dir if master else None
    try:
        run.setup()
        status = run.train()
        record = run.summary(status)
        reduce_peak_memory(run, record)
        from trainer.common import log
        log(f"result: {status} | steps {run.steps} | val_bpb {run.val_bpb} | loss {run.loss} | "
            f"median step {record['step_ms']} ms | {record['tokens_per_second']} tok/s | "
            f"peak memory {record['peak_memory_gib']} GiB | wall {record['wall_seconds']:.1f}s")
        if master:
            emit_result(run_dir, **record)
        if getattr(run, "wandb", None):
            run.wandb.finish()
        if close(run):
            # Everything is on disk; skip interpreter teardown, where gloo's C++ threads can abort (SIGABRT).
            return hard_exit(EXIT_CODES[status])
        return EXIT_CODES[status]
    except UsageError as e:
        print(f"trainer: error: {e}", file=sys.stderr, flush=True)
        if master:
            emit_result(run_dir, **run.summary("crashed", str(e)))
        return hard_exit(2)
    except BaseException as e:  # noqa: BLE001 -- every way out ends with a result event
        from trainer.common import is_oom, one_line
        if isinstance(e, KeyboardInterrupt):
            status, error = "cancelled", "interrupted before training started" if not Stop.in_loop else "interrupted"
        elif is_oom(e):
            status, error = "oom", one_line(e)
        else:
            import traceback
            traceback.print_exc()
            status, error = "crashed", one_line(e)
        print(f"trainer: {status}: {error}", file=sys.stderr, flush=True)
        # On OOM every rank that hits it reports, since the others may be stuck in a collective.
        if master or status == "oom":
            emit_result(run_dir if master else None, **run.summary(status, error))
        return hard_exit(EXIT_CODES[status])


def close(run: Run) -> bool:
    """Release the loader and the process group; True when this was a distributed run."""
    loader = getattr(run, "train_loader", None)
    if loader is not None:
        loader.close()
    import torch.distributed as dist
    if not dist.is_initialized():
        return False
    dist.barrier()  # no rank tears down its connections while another still uses them
    dist.destroy_process_group()
    return True


def hard_exit(code: int) -> int:
    """After a failure other ranks may never join a collective again: skip teardown that could hang."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
