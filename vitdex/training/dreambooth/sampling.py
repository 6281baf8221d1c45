"""Sample images during a DreamBooth run: what the weights draw now, step by step.

Every ``sample_every`` steps (and at the end) each sample prompt is rendered with the
current weights into ``output_dir/samples/step-NNNNNNNN/II.png``, and one JSON line per
image is appended to ``output_dir/samples.jsonl`` (``{step, index, prompt, seed, file}``,
``file`` relative to ``output_dir``). A prompt's seed (``sample_seed + index``) drives a
CPU generator: a step gives the same pixels in an uninterrupted run and in a resumed one.
The pipeline is assembled from the modules the run trains, never a copy of them.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vitdex.training.config import TrainConfig
from vitdex.training.dreambooth.model import Model
from vitdex.training.losses import SAMPLES_DIR, record_samples

__all__ = ["Sampler", "eval_mode", "sample_folder"]


def sample_folder(step: int) -> str:
    """The folder (under ``samples/``) of one step's images."""
    return f"step-{step:08d}"


@contextmanager
def eval_mode(model: Model, *, vae: bool = False) -> Iterator[None]:
    """The trained modules in eval mode (and the VAE on the device when asked), restored after.

    The VAE may have been parked on the CPU once latents were cached; it goes back there.
    """
    modules = [model.unet, *model.text_encoders]
    modes = [m.training for m in modules]
    vae_device = next(model.vae.parameters()).device
    for m in modules:
        m.eval()
    if vae:
        model.vae.to(model.device)
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
        if vae:
            model.vae.to(vae_device)


class Sampler:
    """Renders a run's sample prompts with the weights it has now."""

    def __init__(self, config: TrainConfig, model: Model, base_pipeline: Any, output_dir: Path):
        self.config = config
        self.model = model
        self.base_pipeline = base_pipeline
        self.output_dir = output_dir
        self.prompts = list(config.sample_prompts) or [config.instance_prompt]
        self.resolution = int(config.sample_resolution or config.resolution or 0)

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based, just done) gets samples on the schedule."""
        every = self.config.sample_every
        return every > 0 and step > 0 and step % every == 0

    def _pipeline(self) -> Any:
        """A pipeline of the run's own modules (shared, not copied) and a fresh scheduler."""
        base = self.base_pipeline
        cls = type(base)
        components = dict(base.components)
        components["unet"] = self.model.unet
        components["vae"] = self.model.vae
        model = self.model
        components.update(zip(model.version.text_encoders, model.text_encoders, strict=True))
        # A fresh scheduler: set_timesteps keeps state on the object.
        components["scheduler"] = type(base.scheduler).from_config(
            base.scheduler.config, prediction_type=self.model.prediction_type
        )
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in components.items() if k in accepted}
        if "safety_checker" in accepted:
            kwargs["safety_checker"] = None
            kwargs["feature_extractor"] = None
            kwargs["requires_safety_checker"] = False
        if "add_watermarker" in accepted:
            kwargs["add_watermarker"] = False  # an invisible watermark alters the pixels
        pipe = cls(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generate(self, step: int, say: Callable[[str], None]) -> float:
        """Render every prompt at ``step``; returns the seconds per image.

        The caller puts the weights to sample (the EMA's, say) in place first.
        """
        cfg = self.config
        folder = self.output_dir / SAMPLES_DIR / sample_folder(step)
        folder.mkdir(parents=True, exist_ok=True)
        lines: list[dict[str, Any]] = []
        started = time.perf_counter()
        with eval_mode(self.model, vae=True), torch.no_grad():
            pipe = self._pipeline()
            for index, prompt in enumerate(self.prompts):
                say(f"sample {index + 1}/{len(self.prompts)} at step {step}")
                seed = cfg.sample_seed + index
                generator = torch.Generator("cpu").manual_seed(seed)
                with self.model.autocast():
                    image = pipe(
                        prompt,
                        height=self.resolution,
                        width=self.resolution,
                        num_inference_steps=cfg.sample_steps,
                        generator=generator,
                    ).images[0]
                name = f"{index:02d}.png"
                tmp = folder / f".{name}.tmp"
                image.save(tmp, format="PNG")
                tmp.replace(folder / name)
                relative = f"{SAMPLES_DIR}/{sample_folder(step)}/{name}"
                lines.append(
                    {"step": step, "index": index, "prompt": prompt, "seed": seed, "file": relative}
                )
        seconds = (time.perf_counter() - started) / len(self.prompts)
        record_samples(self.output_dir, lines)
        return seconds
