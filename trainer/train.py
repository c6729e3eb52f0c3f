"""Pretrain the GPT (docs/DESIGN.md, docs/trainer.md).

    python -m trainer.train --depth 4 --iterations 100 ...                    # one process (CPU or 1 GPU)
    torchrun --nproc_per_node 8 -m trainer.train --depth 20 --ratio 20 ...    # data parallel, sharded optimizer state; NCCL or gloo
    NL_DEPTH=20 NL_RATIO=20 torchrun ... -m trainer.train                     # the same, as a SkyPilot task runs it

Settings: trainer/settings.py (flags, or NL_* variables). Events (docs/events.md) go to stdout as JSON
lines from rank 0, human lines to stderr; the result is also written to RUN_DIR/result.json. Exit codes:
0 ok, 1 crashed, 2 settings that cannot run, 3 oom, 4 over_budget, 130 cancelled.
"""
from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from contextlib import nullcontext

from trainer.arithmetic import ShapeError, grad_accum_steps, iterations_for
from trainer.events import EXIT_CODES, USAGE_EXIT, Result, emit, emit_result
from trainer.hardware import cores, mfu, peak_flops, this_cpu
from trainer.settings import SettingError, TrainConfig, from_sources


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
    """What the run has done so far: enough for a result at any moment, also after a failure."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.t_start = time.time()
        self.wall_before = 0.0  # wall seconds of earlier segments of a resumed run
        self.steps = 0
        self.loss = self.val_bpb = self.gzip_bpb = None
        self.error = None  # why the loop stopped the run early with a checkpoint (a failed data fetch)
        self.device_name = self.machine = None  # what ran it; machine: the CPU's key (trainer/hardware.py)
        self.data = None  # what it trained on: a Hub dataset with its commit, a folder, stdlib or synthetic
        self.step_ms: list[float] = []
        self.eval_seconds = 0.0  # with the steps, what a wall-time prediction is made of
        self.device = self.peak = self.env = None
        self.world_size = 1

    def median_step_ms(self):
        """After the first step of this process (compilation and warm-up excluded)."""
        times = self.step_ms[1:] or self.step_ms
        return statistics.median(times) if times else None

    def wall(self) -> float:
        return self.wall_before + time.time() - self.t_start

    def summary(self, status: str, error: str | None = None) -> Result:
        from trainer.common import peak_memory_gib
        med = self.median_step_ms()
        tps = self.cfg.total_batch / (med / 1000) if med else None
        peak_mem = reserved = None
        if self.device is not None:
            try:
                peak_mem = round(peak_memory_gib(self.device), 4)
                if self.device.type == "cuda":  # what the caching allocator held: allocated + its fragmentation
                    import torch
                    reserved = round(torch.cuda.max_memory_reserved(self.device) / 2**30, 4)
            except Exception:
                pass
        return Result(status=status, steps=self.steps, val_bpb=self.val_bpb, gzip_bpb=self.gzip_bpb, loss=self.loss,
                    device_batch=self.cfg.device_batch,
                    device_name=self.device_name, machine=self.machine, data=self.data,
                    mfu=mfu(self.cfg.shape.flops_per_token, tps, self.peak, self.world_size),
                    peak_memory_gib=peak_mem, peak_reserved_gib=reserved,
                    tokens_per_second=None if tps is None else round(tps, 1),
                    step_ms=None if med is None else round(med, 3),
                    step_ms_mean=round(statistics.mean(self.step_ms[1:]), 3) if len(self.step_ms) > 1 else None,
                    eval_seconds=round(self.eval_seconds, 3), wall_seconds=round(time.time() - self.t_start, 3),
                    total_wall_seconds=round(self.wall(), 3), error=error)


def train(cfg: TrainConfig, run: Run) -> str:
    """Set up, print every derived number, train to the horizon; returns the status."""
    trainer = Trainer(cfg, run)
    status = trainer.loop()
    trainer.finish()
    return status


class Trainer:
    """One process's share of a run. What nanochat's script keeps in globals are fields here, so that setup, the
    step and the loop each read on one screen. torch is imported inside the methods: main sets OMP_WAIT_POLICY
    before torch loads. It stays in this module: under `python -m trainer.train` this module is __main__, and a
    module that imported trainer.train would read a second Stop, one the signal handler never sets."""

    def __init__(self, cfg: TrainConfig, run: Run):
        self.cfg, self.run = cfg, run  # cfg changes once per out-of-memory halving (halve_batch)
        self.probe = cfg.probe is not None
        self._processes()
        self._horizon()
        self._build()
        self._start()

    def _processes(self) -> None:
        """The device, the threads and the process group."""
        import torch

        from trainer import common
        from trainer.precision import choose as choose_precision
        cfg, run = self.cfg, self.run
        run.env = env = self.env = common.dist_env()
        common.set_master(env.master)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise SettingError("device cuda but torch sees no CUDA device")
        cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        kind = self.kind = "cuda" if cuda else "cpu"
        run.device = device = self.device = torch.device(kind, env.local_rank) if cuda else torch.device("cpu")
        if kind == "cuda":
            torch.cuda.set_device(device)
            torch.set_float32_matmul_precision("high")
        self.threads = cfg.threads or max(1, cores() // env.local_world_size)
        torch.set_num_threads(self.threads)
        self.compiled = cfg.compile if cfg.compile is not None else kind == "cuda"
        self.fused_loss = cfg.fused_loss if cfg.fused_loss is not None else kind == "cpu"
        common.init_distributed(env, kind)
        self.precision = choose_precision(cfg.dtype, device)
        run.world_size = env.world_size
        bf16 = self.precision.dtype == "bf16"
        self.autocast = (lambda: torch.autocast(kind, dtype=torch.bfloat16)) if bf16 else nullcontext

    def _horizon(self) -> None:
        """Every derived number, from the one arithmetic module, printed."""
        from trainer import common
        from trainer.common import log
        cfg, run, env, shape = self.cfg, self.run, self.env, self.cfg.shape
        try:
            grad_accum = self.grad_accum = grad_accum_steps(cfg.total_batch, cfg.device_batch, cfg.seq_len,
                                                            env.world_size)
            iterations = self.iterations = cfg.probe if self.probe else iterations_for(
                shape.params, cfg.total_batch, flops_per_token=shape.flops_per_token, **cfg.horizon)
        except ShapeError as e:
            raise SettingError(str(e)) from None
        tokens = self.tokens = iterations * cfg.total_batch
        run.device_name = name = common.device_name(self.device)
        run.machine = None if self.kind == "cuda" else this_cpu().key
        run.peak = peak_flops(name) if self.kind == "cuda" else None
        log(f"device: {name} ({self.kind}), world size {env.world_size}, {self.threads} threads/process, "
            f"compile {'on' if self.compiled else 'off'}, fused loss {'on' if self.fused_loss else 'off'}")
        log(f"precision: {self.precision.describe()}")
        log(f"model: depth {shape.depth}, model_dim {shape.model_dim} = 64·{shape.depth}, {shape.n_head} heads × "
            f"{shape.actual_head_dim}, vocab {shape.vocab_size:,}, seq_len {shape.seq_len:,}")
        log(f"params: {shape.params:,} = 2·{shape.vocab_size:,}·{shape.model_dim} + "
            f"12·{shape.depth}·{shape.model_dim}² (matrices {shape.matrix_params:,}, "
            f"embedding {shape.embedding_params:,}, head {shape.head_params:,})")
        log(f"FLOPs/token: {shape.flops_per_token:,} = 6·(params − embedding) + 12·L·heads·head_dim·T")
        log(f"batch: {cfg.total_batch:,} tokens/step = {cfg.device_batch} seq × {cfg.seq_len:,} tokens × "
            f"{env.world_size} ranks × {grad_accum} micro-steps")
        (horizon, value), = cfg.horizon.items()
        how = ("probe" if self.probe else "iterations" if horizon == "iterations" else
               f"ratio {value:g} × {shape.params:,} params / {cfg.total_batch:,}" if horizon == "ratio" else
               f"{value:.4g} FLOPs / ({shape.flops_per_token:,} · {cfg.total_batch:,})")
        log(f"horizon: {iterations:,} steps ({how}), {tokens:,} tokens (tokens:params {tokens / shape.params:.2f}), "
            f"{tokens * shape.flops_per_token:.4e} FLOPs")
        peak = f"{run.peak / 1e12:g} TFLOP/s per device" if run.peak else "unknown (MFU reported as null)"
        log(f"peak dense bf16: {peak}")

    def _build(self) -> None:
        """The data, the model and its optimizers."""
        import torch

        from trainer import common
        from trainer.common import log
        from trainer.dataset import prepare
        from trainer.gpt import GPT
        from trainer.optim import build_optimizers, compile_newton_schulz, dmodel_lr_scale
        cfg, shape, device = self.cfg, self.cfg.shape, self.device
        self.run.dataset = data = self.data = prepare(cfg, self.env, self.tokens)
        self.run.data = "synthetic" if data.synthetic else data.described
        if cfg.memory_limit_gib:
            log(common.limit_memory(cfg.memory_limit_gib, device))
        torch.manual_seed(cfg.seed)
        with device:
            model = self.model = GPT(shape, fused_loss=self.fused_loss)
            model.init_weights()
        n = sum(p.numel() for p in model.parameters())
        assert n == shape.params, f"model has {n:,} parameters, ModelShape says {shape.params:,}"
        self.optimizers = build_optimizers(model, matrix_lr=cfg.matrix_lr, embedding_lr=cfg.embedding_lr,
                                           unembedding_lr=cfg.unembedding_lr, device_type=self.kind,
                                           ns_dtype=self.precision.newton_schulz)
        scale = dmodel_lr_scale(shape.model_dim)
        log(f"optimizers: Muon lr {cfg.matrix_lr:g} (momentum 0.85→0.95 over 300 steps) on {shape.matrix_params:,} "
            f"params; AdamW betas (0.8, 0.95): embedding lr {cfg.embedding_lr:g}·{scale:.4f} = "
            f"{cfg.embedding_lr * scale:.5f}, head lr {cfg.unembedding_lr:g}·{scale:.4f} = "
            f"{cfg.unembedding_lr * scale:.6f}  (scale = ({shape.model_dim}/768)^-0.5)")
        if self.compiled:
            compile_newton_schulz()

    def _start(self) -> None:
        """Resume where a checkpoint says, then the loader, the evaluator, W&B and the start event."""
        import torch

        from trainer import checkpoint
        from trainer.common import log
        cfg, run, env, data = self.cfg, self.run, self.env, self.data
        self.facts = {"shape": cfg.shape.as_dict(), "total_batch": cfg.total_batch, "world_size": env.world_size,
                      "synthetic": data.synthetic}  # what a checkpoint must share to continue this run
        resumed_from = self.loader_state = None
        if not self.probe and env.master:
            for p in checkpoint.sweep(cfg.run_dir):
                log(f"checkpoint: removed incomplete {p.name}")
        if cfg.resume and not self.probe:
            resumed = checkpoint.resume(cfg.run_dir, rank=env.rank, world_size=env.world_size, facts=self.facts,
                                        model=self.model, optimizers=self.optimizers, device=self.device)
            if resumed:
                resumed_from, self.loader_state, st = resumed
                run.steps = resumed_from
                run.val_bpb, run.loss, run.wall_before = st.get("val_bpb"), st.get("loss"), st.get("wall_seconds", 0.0)
        for opt in self.optimizers:  # the state the first step would create: its memory counts from the first step on
            opt.init_state()
        self.train_loader = run.train_loader = data.loader(cfg, env, grad_accum=self.grad_accum,
                                                           threads=self.threads, state=self.loader_state)
        self.evaluator = self._evaluator()
        self.wandb = _wandb(cfg, env) if cfg.wandb_project and env.master else None
        # No DDP: the optimizers reduce-scatter the gradients themselves (sharded state, trainer/optim.py).
        # Evaluation runs the same (compiled) module.
        self.train_model = torch.compile(self.model, dynamic=False) if self.compiled else self.model
        self.config_event = {**cfg.to_dict(), "dtype_resolved": self.precision.dtype, "compile_resolved": self.compiled,
                             "fused_loss_resolved": self.fused_loss, "threads": self.threads,
                             "grad_accum": self.grad_accum, "synthetic_data": data.synthetic}
        if env.master:
            shape, tokens = cfg.shape, self.tokens
            emit("start", mode="probe" if self.probe else "train", shape=shape.as_dict(), config=self.config_event,
                 world_size=env.world_size, device=self.kind, device_name=run.device_name, peak_flops=run.peak,
                 grad_accum=self.grad_accum, iterations=self.iterations, tokens=tokens,
                 total_flops=tokens * shape.flops_per_token, resumed_from_step=resumed_from)

    def _evaluator(self):
        from trainer.evaluate import Evaluator
        cfg, env, data = self.cfg, self.env, self.data
        eval_steps = max(1, cfg.eval_tokens // (cfg.device_batch * cfg.seq_len * env.world_size))
        return Evaluator(lambda: data.val_loader(cfg, env, threads=self.threads), eval_steps,
                         data.token_bytes(cfg.vocab_size), self.device, self.autocast,
                         None if data.synthetic else data.tokenizer.decode_bytes)

    def loop(self) -> str:
        """Train to the horizon, or until a stop request, the budget or the data ends it; returns the status."""
        from trainer.common import log
        from trainer.optim import apply_schedule, lr_multiplier
        run = self.run
        if not self.probe and run.steps == 0 and self.cfg.eval_every > 0:
            self.evaluate()
        Stop.in_loop = True
        updated = False  # no optimizer step has changed the weights in this process yet
        while run.steps < self.iterations:
            t0 = time.time()
            step = run.steps  # 0-based index of the step being taken
            # a probe reports its batch's out of memory; it does not work around it
            loss_sum = self.accumulate() if updated or self.probe else self._accumulate_or_halve()
            if loss_sum is None:  # halved: the step starts again at the smaller batch
                continue
            cfg = self.cfg  # as a halving left it
            lrm = lr_multiplier(step, self.iterations, cfg.warmup_ratio, cfg.warmdown_ratio, cfg.final_lr_frac)
            apply_schedule(self.optimizers, step, lrm)
            for opt in self.optimizers:
                opt.step()
            updated = True
            self.model.zero_grad(set_to_none=True)
            loss, stop, broke, starved, fetch_error = self._agree(loss_sum)
            run.steps += 1
            run.loss = loss
            dt = time.time() - t0
            run.step_ms.append(dt * 1000)
            _log_step(run, self.iterations, dt, lrm, self.train_loader, self.wandb)
            last = run.steps == self.iterations
            if not self.probe and (last or (cfg.eval_every > 0 and run.steps % cfg.eval_every == 0)) and not (
                    stop or broke or starved):
                self.evaluate()
            if starved:
                run.error = fetch_error or "a data fetch failed on another node (its log says which)"
                log(f"{run.error}: stopping after step {run.steps} with a checkpoint")
                return "crashed"
            if stop or broke:
                log(f"{'stop requested' if stop else f'budget of ${cfg.max_cost:g} reached'} after step {run.steps}")
                return "cancelled" if stop else "over_budget"
            if not self.probe and not last and cfg.checkpoint_every > 0 and run.steps % cfg.checkpoint_every == 0:
                self.save()
        return "ok"

    def finish(self) -> None:
        """The final eval and checkpoint, also after a stop; W&B closed."""
        if self.run.steps == self.iterations and not self.probe and self.run.val_bpb is None:
            self.evaluate()  # a resumed run that had nothing left to do still reports val_bpb
        if not self.probe:
            self.save()
        Stop.in_loop = False
        if self.wandb:
            self.wandb.finish()

    def accumulate(self):
        """One optimizer step's micro-batches, forward and backward: the gradients, and the summed loss."""
        import torch
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y = self.train_loader.next_batch()
            if self.kind == "cuda":
                x, y = (t.pin_memory().to(self.device, non_blocking=True) for t in (x, y))
            with self.autocast():
                loss = self.train_model(x, y)
            (loss / self.grad_accum).backward()
            loss_sum += loss.detach().float()
        return loss_sum

    def _accumulate_or_halve(self):
        """Before the first update out of memory is survivable: every rank agrees on the smaller batch, or all go
        on. The summed loss, or None where the batch was halved."""
        from trainer import common
        oom = loss_sum = None
        try:
            loss_sum = self.accumulate()
        except Exception as e:  # noqa: BLE001 -- only an allocation failure is handled
            if not common.is_oom(e) or self.cfg.device_batch == 1:
                raise
            oom = common.oom_line(e)
        if common.any_rank(oom is not None, self.device):
            self.halve_batch(oom or "on another rank")
            return None
        return loss_sum

    def halve_batch(self, error: str) -> None:
        """Out of memory before the first update of this process: free what the step allocated, halve the
        device batch and double the micro-steps (the same tokens per step, the same mathematics), and start
        the data again from where this process began, as a run started at the smaller batch would."""
        from trainer import common
        from trainer.common import log
        run, env = self.run, self.env
        self.model.zero_grad(set_to_none=True)
        self.train_loader.close()
        common.free_memory(self.device)
        planned = self.cfg.device_batch
        cfg = self.cfg = run.cfg = self.cfg.replace(device_batch=planned // 2)
        self.grad_accum *= 2
        self.config_event.update(device_batch=cfg.device_batch, grad_accum=self.grad_accum)  # what checkpoints record
        self.train_loader = run.train_loader = self.data.loader(cfg, env, grad_accum=self.grad_accum,
                                                                threads=self.threads, state=self.loader_state)
        self.evaluator = self._evaluator()
        log(f"out of memory at device batch {planned} before the first update ({error}): device batch "
            f"{cfg.device_batch}, grad accum {self.grad_accum}, {cfg.total_batch:,} tokens per step as before")
        if env.master:
            emit("batch", step=run.steps, device_batch=cfg.device_batch, planned_device_batch=planned,
                 grad_accum=self.grad_accum, reason=error)

    def _agree(self, loss_sum):
        """One small collective per step: the mean loss, and whether any rank must stop (a stop request, the
        budget, a shard ahead that could not be fetched: stop while the data lasts). With this rank's fetch error."""
        import torch
        import torch.distributed as dist
        cfg, env, device = self.cfg, self.env, self.device
        over_budget = (env.master and cfg.max_cost is not None and cfg.price_per_hour
                       and self.run.wall() * cfg.price_per_hour / 3600 >= cfg.max_cost)
        fetch_error = self.data.failed()
        flags = torch.stack([loss_sum / self.grad_accum, torch.tensor(float(Stop.requested), device=device),
                             torch.tensor(float(bool(over_budget)), device=device),
                             torch.tensor(float(fetch_error is not None), device=device)])
        if env.distributed:
            dist.all_reduce(flags)
        flags = flags.tolist()
        return flags[0] / env.world_size, flags[1] > 0, flags[2] > 0, flags[3] > 0, fetch_error

    def evaluate(self) -> None:
        from trainer.common import log
        run = self.run
        if run.gzip_bpb is None:  # once: the validation text never changes
            run.gzip_bpb = self.evaluator.gzip_bpb()
        t0 = time.time()
        run.val_bpb = self.evaluator.bpb(self.train_model)
        run.eval_seconds += time.time() - t0
        bar = "" if run.gzip_bpb is None else f" (gzip -9 on the same text: {run.gzip_bpb:.4f})"
        log(f"eval: step {run.steps:,} | val_bpb {run.val_bpb:.4f}{bar} | {time.time() - t0:.1f}s")
        if self.env.master:
            emit("eval", step=run.steps, val_bpb=run.val_bpb, gzip_bpb=run.gzip_bpb)
            if self.wandb:
                self.wandb.log({"step": run.steps, "val_bpb": run.val_bpb})

    def save(self) -> None:
        from trainer import checkpoint, common
        from trainer.common import log
        run, t0 = self.run, time.time()
        states = checkpoint.gather_rank_states(checkpoint.rank_state(self.train_loader, self.device))
        state = {"step": run.steps, "iterations": self.iterations, "val_bpb": run.val_bpb, "loss": run.loss,
                 "wall_seconds": run.wall(), **self.facts, "config": self.config_event}
        path = checkpoint.save(self.cfg.run_dir, run.steps, model_state=self.model.state_dict(),
                               optim_state=[o.state_dict() for o in self.optimizers], rank_states=states,
                               state=state, keep=self.cfg.keep_checkpoints)
        if self.env.master:
            log(f"checkpoint: {path} ({time.time() - t0:.1f}s)")
            emit("checkpoint", step=run.steps, path=str(path))
        common.barrier()


def _log_step(run: Run, iterations: int, dt: float, lrm: float, loader, wandb) -> None:
    from trainer.common import log
    tps = run.cfg.total_batch / dt
    step_mfu = mfu(run.cfg.shape.flops_per_token, tps, run.peak, run.world_size)
    med = run.median_step_ms()
    eta = (iterations - run.steps) * med / 1000 if med else None
    elapsed = time.time() - run.t_start
    epoch = getattr(loader, "epoch", 0)
    log(f"step {run.steps:05d}/{iterations:05d} | loss {run.loss:.4f} | lrm {lrm:.3f} | {dt * 1000:.0f} ms | "
        f"{tps:,.0f} tok/s | mfu {f'{step_mfu:.1%}' if step_mfu is not None else 'n/a'} | epoch {epoch} | "
        f"elapsed {elapsed:.0f}s | eta {f'{eta:.0f}s' if eta is not None else '?'}")
    if run.env.master:
        emit("step", step=run.steps, iterations=iterations, loss=run.loss, lr_mult=lrm, step_ms=round(dt * 1000, 3),
             tokens_per_second=round(tps, 1), mfu=step_mfu, elapsed_s=round(elapsed, 3),
             eta_s=None if eta is None else round(eta, 1), epoch=epoch)
        if wandb:
            wandb.log({"step": run.steps, "loss": run.loss, "lr_mult": lrm, "tokens_per_second": tps,
                       "mfu": step_mfu, "step_ms": dt * 1000})


def _wandb(cfg: TrainConfig, env):
    from trainer.common import log
    try:
        import wandb
    except ImportError:
        log("wandb: not importable; W&B logging off")
        return None
    handle = wandb.init(project=cfg.wandb_project, name=cfg.run_name, config=cfg.to_dict())
    emit("wandb", url=getattr(handle, "url", None), project=cfg.wandb_project)  # for the ledger
    return handle


def _reduce_peak_memory(run: Run, record: Result) -> None:
    """Peak memory of the busiest rank (a collective: only on a healthy finish)."""
    import torch
    import torch.distributed as dist
    if run.env.distributed and record.peak_memory_gib is not None:
        t = torch.tensor(record.peak_memory_gib, dtype=torch.float64, device=run.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        record.peak_memory_gib = round(t.item(), 4)


def main(argv=None) -> int:
    # OpenMP threads that spin while waiting collapse (100x) when the CPU is shared; wait passively.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        cfg = from_sources(argv)
    except SettingError as e:
        print(f"trainer: error: {e}", file=sys.stderr, flush=True)
        return USAGE_EXIT
    signal.signal(signal.SIGINT, Stop.handler)
    signal.signal(signal.SIGTERM, Stop.handler)
    run = Run(cfg)
    master = os.environ.get("RANK", "0") == "0"
    run_dir = cfg.run_dir if master else None
    try:
        status = train(cfg, run)
        record = run.summary(status, run.error)
        _reduce_peak_memory(run, record)
        from trainer.common import log
        log(f"result: {status} | steps {run.steps} | val_bpb {run.val_bpb} | loss {run.loss} | "
            f"median step {record.step_ms} ms | {record.tokens_per_second} tok/s | "
            f"peak memory {record.peak_memory_gib} GiB | wall {record.wall_seconds:.1f}s")
        if master:
            emit_result(run_dir, record)
        if _close(run):
            # Everything is on disk; skip interpreter teardown, where gloo's C++ threads can abort (SIGABRT).
            return _hard_exit(EXIT_CODES[status])
        return EXIT_CODES[status]
    except SettingError as e:
        print(f"trainer: error: {e}", file=sys.stderr, flush=True)
        if master:
            emit_result(run_dir, run.summary("crashed", str(e)))
        return _hard_exit(USAGE_EXIT)
    except BaseException as e:  # noqa: BLE001 -- every way out ends with a result event
        from trainer.common import is_oom, one_line, oom_line
        if isinstance(e, KeyboardInterrupt):
            status, error = "cancelled", "interrupted before training started" if not Stop.in_loop else "interrupted"
        elif is_oom(e):
            status, error = "oom", oom_line(e)
        else:
            import traceback
            traceback.print_exc()
            status, error = "crashed", one_line(e)
        print(f"trainer: {status}: {error}", file=sys.stderr, flush=True)
        # On OOM every rank that hits it reports, since the others may be stuck in a collective.
        if master or status == "oom":
            emit_result(run_dir if master else None, run.summary(status, error))
        return _hard_exit(EXIT_CODES[status])


def _close(run: Run) -> bool:
    """Release the loader and the process group; True when this was a distributed run."""
    for part in (getattr(run, "train_loader", None), getattr(run, "dataset", None)):
        if part is not None:
            part.close()
    import torch.distributed as dist
    if not dist.is_initialized():
        return False
    dist.barrier()  # no rank tears down its connections while another still uses them
    dist.destroy_process_group()
    return True


def _hard_exit(code: int) -> int:
    """After a failure other ranks may never join a collective again: skip teardown that could hang."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
