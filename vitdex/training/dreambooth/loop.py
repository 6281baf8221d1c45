"""The DreamBooth training loop: stages, steps, checkpoints and resume, progress, stop.

:func:`train` loads the base, resolves the settings and runs the loop; on completion it
writes the output (:mod:`.output`), when asked to stop it saves a checkpoint
(:mod:`.checkpoints`) and returns a result with ``completed=False``. Along the way it
keeps the EMA of the weights (:mod:`.ema`), renders samples (:mod:`.sampling`) and
measures the validation loss (:mod:`.validation`); neither of the last two touches the
random state training draws from, so they never change the trained weights. :func:`main` is the
``python -m vitdex.training.dreambooth CONFIG.json OUTPUT_DIR`` entry point.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdex.devices import resolve_device
from vitdex.errors import VitdexError
from vitdex.training.bases import LoadedBase, load_base
from vitdex.training.config import (
    Stage,
    TrainConfig,
    TrainProgress,
    TrainResult,
    latest_checkpoint,
    list_checkpoints,
    plan_stages,
    stage_at,
)
from vitdex.training.dreambooth.batches import Batches, generate_class_images, noise_seed
from vitdex.training.dreambooth.checkpoints import (
    clear_partial,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vitdex.training.dreambooth.ema import EMA
from vitdex.training.dreambooth.model import Model, check_model_resolution, resolve_config
from vitdex.training.dreambooth.optim import Optimization
from vitdex.training.dreambooth.output import finished_result, write_final, write_result
from vitdex.training.dreambooth.sampling import Sampler
from vitdex.training.dreambooth.validation import Validator, hold_out
from vitdex.training.losses import record_validation

__all__ = ["main", "train"]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Run:
    """One call of :func:`train`: model, data, optimizer, loop, checkpoints, output."""

    def __init__(
        self,
        config: TrainConfig,
        user_config: TrainConfig,
        base: LoadedBase,
        output_dir: Path,
        on_progress: Callable[[TrainProgress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.config = config
        self.user_config = user_config
        self.base = base
        self.output_dir = output_dir
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.device = torch.device(config.device)
        self.stages = plan_stages(config)
        self.total = config.total_steps
        self.notes: list[str] = []
        self.started = time.perf_counter()
        self.model = Model(config, base, self.device)
        self.batches = Batches(config, self.model)
        self.optim = Optimization(config, self.device, self.stages, self.notes)
        self.last_loss: float | None = None
        self.step_times: deque[float] = deque(maxlen=20)
        self.ema: EMA | None = None
        self.validator: Validator | None = None
        self.sampler: Sampler | None = None
        if config.sample_every > 0:
            self.sampler = Sampler(config, self.model, base.pipeline, output_dir)
        self.sampled: set[int] = set()
        self.validated: set[int] = set()

    # -- progress

    def report(self, phase: str, step: int, **fields: Any) -> None:
        if self.on_progress is None:
            return
        self.on_progress(
            TrainProgress(
                phase=phase,
                step=step,
                total_steps=self.total,
                elapsed_s=time.perf_counter() - self.started,
                **fields,
            )
        )

    def stop_requested(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    def peak_memory(self) -> int | None:
        """Peak CUDA memory allocated since the run started (None elsewhere)."""
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.max_memory_allocated(self.device))

    # -- during training: samples and validation

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Work beside training: the global RNG state kept, the EMA weights swapped in."""
        state = rng_state()
        swap = self.ema.swapped() if self.ema is not None else nullcontext()
        try:
            with swap:
                yield
        finally:
            set_rng_state(state)

    def sample(self, step: int) -> None:
        if self.sampler is None or step in self.sampled:
            return
        self.sampled.add(step)
        with self.aside():
            seconds = self.sampler.generate(
                step, lambda message: self.report("sampling", step, message=message)
            )
        self.report("sampling", step, message=f"samples at step {step}: {seconds:.2f} s each")

    def validate(self, step: int) -> None:
        if self.validator is None or step in self.validated:
            return
        self.validated.add(step)
        with self.aside():
            loss = self.validator.measure()
        record_validation(self.output_dir, step, loss)
        self.report(
            "validating",
            step,
            validation_loss=loss,
            message=f"validation loss {loss:.6f} at step {step}",
        )

    def during(self, step: int) -> None:
        """Samples and validation due after step ``step`` (1-based)."""
        cfg = self.config
        if self.sampler is not None and self.sampler.due(step):
            self.sample(step)
        if cfg.validation_every and step % cfg.validation_every == 0:
            self.validate(step)

    # -- loop

    def enter_stage(self, stage: Stage, resume_state: Mapping[str, Any] | None) -> None:
        self.model.set_stage(stage)
        if self.optim.key != stage.optimizer:
            self.optim.start(stage, self.model)
            if resume_state is not None:
                self.optim.resume(resume_state)
        if not any(s.train_text for s in self.stages if s.end > stage.start):
            self.batches.cache_text()

    def train_step(self, step: int, stage: Stage) -> float:
        cfg = self.config
        accum = cfg.gradient_accumulation_steps
        total_loss = 0.0
        for a in range(accum):
            micro = step * accum + a
            draws, n_instance = self.batches.draws(micro)
            mean, std = self.batches.latents(draws)
            captions = [ex.caption for _, ex, _ in draws]
            cond = self.batches.conditioning(captions, stage.train_text)
            generator = torch.Generator("cpu").manual_seed(noise_seed(cfg.seed, micro))
            loss = self.model.loss(mean, std, cond, generator, n_instance)
            self.optim.backward(loss / accum)
            # One device sync per micro-batch, after backward; a bad loss still stops the
            # run before the optimizer applies anything.
            value = float(loss.detach())
            if not math.isfinite(value):
                raise VitdexError(
                    f"the loss became {value} at step {step + 1}; lower the learning "
                    "rate or use bf16/fp32 instead of fp16"
                )
            total_loss += value / accum
        self.optim.step()
        return total_loss

    def save(self, step: int) -> Path:
        return save_checkpoint(
            self.output_dir,
            step,
            config=self.config,
            stages=self.stages,
            model=self.model,
            optim=self.optim,
            loss=self.last_loss,
            ema=self.ema,
        )

    def run(self) -> TrainResult:
        cfg = self.config
        _seed_everything(cfg.seed)
        check_model_resolution(self.base.pipeline, int(cfg.resolution or 0))
        if self.sampler is not None:
            check_model_resolution(self.base.pipeline, self.sampler.resolution)
        generate_class_images(
            cfg,
            self.base.pipeline,
            self.device,
            self.stop_requested,
            lambda message: self.report("generating", 0, message=message),
        )
        # Generation may draw from the global generators; start the run from the seed again.
        _seed_everything(cfg.seed)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.batches.load()
        if cfg.validation_images:
            # Held out before anything draws from the instances (data order, buckets, caches).
            self.batches.instances, held = hold_out(self.batches.instances, cfg.validation_images)
            self.validator = Validator(cfg, self.model, held)
        if self.stop_requested():
            found = list_checkpoints(self.output_dir)
            return self.stopped(found[-1][0] if found else 0, found[-1][1] if found else None, None)
        self.model.prepare(
            train_unet=any(s.train_unet for s in self.stages),
            train_text=any(s.train_text for s in self.stages),
        )
        if cfg.ema:
            self.ema = EMA(self.model, cfg.ema_decay)
        clear_partial(self.output_dir)
        step, resume_state, resumed_from = 0, None, None
        checkpoint = latest_checkpoint(self.output_dir)
        if checkpoint is not None:
            step, resume_state = load_checkpoint(checkpoint, cfg, self.model, self.ema)
            self.last_loss = resume_state.get("loss")
            resumed_from = step
        if cfg.cache_latents:
            self.batches.cache_latents(lambda message: self.report("caching", 0, message=message))
        last_saved = step if checkpoint is not None else None
        if resume_state is not None:
            set_rng_state(resume_state["rng"])
        if step == 0:
            self.validate(0)  # the base's loss: the same for every run on these images
        self.report("training", step, message="resumed" if resumed_from is not None else "")
        stage: Stage | None = None
        while step < self.total:
            current = stage_at(self.stages, step)
            if current != stage:
                stage = current
                self.enter_stage(stage, resume_state if step == resumed_from else None)
            if self.stop_requested():
                break
            tick = time.perf_counter()
            self.last_loss = self.train_step(step, stage)
            step += 1
            if self.ema is not None:
                self.ema.update(step)
            self.step_times.append(time.perf_counter() - tick)
            rate = len(self.step_times) / sum(self.step_times)
            self.report(
                "training",
                step,
                stage=stage.name,
                loss=self.last_loss,
                it_per_s=rate,
                lr=self.optim.lr,
                eta_s=(self.total - step) / rate,
            )
            self.during(step)
            if cfg.save_every and step % cfg.save_every == 0 and step < self.total:
                path = self.save(step)
                last_saved = step
                self.report("checkpoint", step, stage=stage.name, checkpoint=str(path))
        if step < self.total:
            # Nothing to save before the first step, or right after a save.
            fresh = step > 0 and last_saved != step
            saved = self.save(step) if fresh else latest_checkpoint(self.output_dir)
            return self.stopped(step, saved, resumed_from)
        return self.finish(step, resumed_from)

    def stopped(self, step: int, path: Path | None, resumed_from: int | None) -> TrainResult:
        self.report("stopped", step, checkpoint=str(path) if path else None)
        return TrainResult(
            final_dir=None,
            steps=step,
            final_loss=self.last_loss,
            config=self.config,
            completed=False,
            checkpoint_dir=path,
            resumed_from=resumed_from,
            optimizer=self.optim.name,
            notes=self.notes,
            elapsed_s=time.perf_counter() - self.started,
            peak_memory_bytes=self.peak_memory(),
        )

    def finish(self, step: int, resumed_from: int | None) -> TrainResult:
        """Samples and validation of the end, then the trained pipeline (and LoRA file)
        and the run's result."""
        if self.sampler is not None:
            self.sample(step)
        self.validate(step)
        if self.ema is not None:
            self.ema.copy_to_model()
            self.notes.append(
                f"the output holds the EMA of the weights (decay {self.config.ema_decay})"
            )
        self.report("saving", step)
        final, lora_file = write_final(self.model, self.config, self.output_dir)
        result = TrainResult(
            final_dir=final,
            steps=step,
            final_loss=self.last_loss,
            config=self.config,
            completed=True,
            checkpoint_dir=latest_checkpoint(self.output_dir),
            lora_file=lora_file,
            resumed_from=resumed_from,
            optimizer=self.optim.name,
            notes=self.notes,
            elapsed_s=time.perf_counter() - self.started,
            peak_memory_bytes=self.peak_memory(),
        )
        write_result(self.output_dir, result, self.user_config)
        self.report("done", step, loss=self.last_loss, message=str(final))
        return result


def train(
    config: TrainConfig,
    output_dir: str | Path,
    *,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Run (or resume, or return the finished result of) a DreamBooth run in ``output_dir``.

    Resumes from the newest complete checkpoint in ``output_dir/checkpoints`` when there is
    one (its settings must match, except ``save_every``/``keep_checkpoints``). Calls
    ``on_progress`` after every optimizer step and at phase changes; checks ``should_stop``
    before every step and, when it returns True, saves a checkpoint and returns a result
    with ``completed=False``. On completion the pipeline is at ``output_dir/final`` (for
    LoRA runs with the LoRA fused in, plus ``output_dir/lora``).
    """
    config.validate()
    out = Path(output_dir).expanduser()
    done = finished_result(out, config)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if on_progress is not None:
        on_progress(TrainProgress(phase="loading", step=0, total_steps=config.total_steps))
    device = resolve_device(config.device)
    base = load_base(
        config.base_model,
        version=config.version,
        config=config.base_config,
        revision=config.revision,
        force=config.force,
    )
    resolved = resolve_config(config, base, device)
    run = _Run(resolved, config, base, out, on_progress, should_stop)
    run.started = started
    return run.run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vitdex.training.dreambooth CONFIG.json OUTPUT_DIR``: train, print JSON lines."""
    parser = argparse.ArgumentParser(
        prog="python -m vitdex.training.dreambooth",
        description="Run or resume a DreamBooth training run from a JSON config.",
    )
    parser.add_argument("config", type=Path, help="TrainConfig as JSON")
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)

    def emit(progress: TrainProgress) -> None:
        print(json.dumps(progress.to_dict()), flush=True)

    try:
        config = TrainConfig.from_dict(json.loads(args.config.read_text(encoding="utf-8")))
        result = train(config, args.output_dir, on_progress=emit)
    except VitdexError as exc:
        print(json.dumps({"error": exc.message}), flush=True)
        return exc.exit_code
    print(json.dumps({"result": result.to_dict()}), flush=True)
    return 0
