"""The training loop: AdamW (or Muon for the blocks' matrices) on windows of the train tokens, with a warmup and a
cosine or warmup-stable-decay schedule, evaluated on fixed validation windows and checkpointed to resume exactly.

Each step reads top to bottom: stop when asked; forward, backward and update; time and log; evaluate and save.
What each phase needs lives beside it: nanoslm.train.step (schedule, optimizers, the update, compile), .state (what
last.pt holds), .data (tokens and validation), .log (dvclive, progress bar), .stop (Ctrl-C).
"""

from pathlib import Path

from .. import distributed, faults, hardware
from ..batches import train_windows
from ..config import Params
from ..conversation import ChatTokens
from ..plotting import plot_loss
from .data import Validation, load_data
from .log import Clock, RunLog, printer
from .state import TrainState, seed_everything
from .step import lr_at, lrs_at, maybe_compile, optimizer_step
from .stop import StopRequest


def train(params: Params, tokens_dir, models_dir, live_dir, plot_path, init: dict | None = None) -> dict:
    """Train (or resume); write models_dir/{best,last}.pt, dvclive metrics and the loss plot.

    init (fine-tuning, see nanoslm.finetune): the weights to start from instead of a fresh model's.
    Returns a summary; summary["interrupted"] is True when Ctrl-C / SIGTERM stopped it after saving.
    """
    hw = hardware.setup(params.hardware)
    ranks = distributed.init(hw.device_type)
    try:
        hw = distributed.share_hardware(hw, ranks, params)
        return _run(params, hw, ranks, Path(tokens_dir), Path(models_dir), live_dir, plot_path, init)
    finally:
        distributed.shutdown(ranks)


def _run(params: Params, hw: hardware.Hardware, ranks: distributed.Ranks, tokens_dir: Path, models_dir: Path,
         live_dir, plot_path, init: dict | None) -> dict:
    tc, cfg = params.train, params.model
    seed_everything(tc.seed + ranks.rank)
    meta, train_data, val_data = load_data(tokens_dir, params)
    state = TrainState(params, meta, hw, ranks, init)
    # pre-training keeps each conversation whole in a window (batches.Passes). Not a fine-tune: its data is all
    # conversations, so every window would begin at one, and the test's tiny chat model then garbled a second turn
    roles = ChatTokens(**meta["chat"]).roles if meta.get("chat") and not init else ()
    sampler = train_windows(tc.windows, tc.seed, train_data.tokens, cfg.block_size, meta["eot_token"], roles)
    model, say = state.model, printer(ranks)
    last_path, best_path = models_dir / "last.pt", models_dir / "best.pt"
    resumed = state.resume(last_path, tc.max_iters, say)
    evaluator = maybe_compile(model, params.hardware.compile, (tc.batch_size, cfg.block_size))
    forward = distributed.wrap(evaluator, ranks, hw.device)  # validation: this rank alone, no DDP
    validation = Validation(val_data, tc, cfg.block_size, hw, meta["splits"]["validation"])
    tokens_per_step = tc.batch_size * tc.grad_accum_steps * cfg.block_size
    say(f"training {model.num_params() / 1e6:.2f}M parameters ({model.num_params(embeddings=False) / 1e6:.2f}M "
        f"outside the embeddings) on {hw.device} x{ranks.world_size} in {str(hw.dtype).removeprefix('torch.')}, "
        f"{tokens_per_step} tokens per step")
    stop, log = StopRequest(), RunLog(live_dir, state.progress, validation, tc.max_iters, ranks)

    def validate(step: int) -> None:  # the main rank scores the fixed windows; a new best is saved to best.pt
        loss = validation.loss(evaluator, model)
        log.val(step, loss)
        state.add_val_point(step, loss, best_path)

    interrupted = False
    try:
        if ranks.is_main and not resumed:  # the initial weights' score; a resumed run has its steps' scores
            validate(0)
        clock = Clock()
        while state.progress.step < tc.max_iters:
            step = state.progress.step
            # stop when asked (Ctrl-C, SIGTERM on any rank), with everything saved
            if distributed.any_rank(stop.requested, ranks, hw.device):
                state.save(last_path)
                interrupted = True
                break
            faults.trip(f"step:{step}")

            # forward, backward and update over this step's micro-batches (this rank's share)
            offsets = sampler.step(step, tc.grad_accum_steps, tc.batch_size)
            micro_batches = (train_data.windows(o, cfg.block_size, hw.device) for o in distributed.share(offsets, ranks))
            state.add_window_loss(optimizer_step(forward, state.optimizers, state.scaler, micro_batches,
                                                 lrs_at(step, tc), tc.grad_clip, hw))
            state.progress.step = step = step + 1
            log.bar.update()

            # time and log the train loss, averaged over the log window
            if step % tc.log_interval == 0:
                train_loss, seconds = state.end_log_window(), clock.lap()
                state.progress.train_points.append((step, train_loss))
                log.train(step, train_loss, state.progress.best_val, lr=lr_at(step - 1, tc),
                          tokens=step * tokens_per_step, tokens_per_sec=tc.log_interval * tokens_per_step / seconds)

            # evaluate, and save a checkpoint to resume from
            with clock.paused():
                if ranks.is_main and (step % tc.eval_interval == 0 or step == tc.max_iters):
                    validate(step)
                if step % tc.checkpoint_interval == 0 or step == tc.max_iters:
                    state.save(last_path)
        if not interrupted:  # a run of 0 steps (finetune.max_iters 0) has its last.pt too; otherwise a no-op
            state.save(last_path)
    finally:
        stop.restore()
        log.close()

    p = state.progress
    if ranks.is_main:
        plot_loss(p.train_points, p.val_points, plot_path,
                  title=f"{cfg.n_layer} layers x {cfg.n_embd}, best val loss {p.best_val:.3f}")
    return {"best_val_loss": p.best_val, "steps": p.step, "interrupted": interrupted}
