"""A pretraining campaign: one process that trains a model for a wall-clock budget, then probes,
tracks and fine-tunes it, writing what a user needs into one small folder as it goes.

It is made for the rare GPU call (one command of at most ten minutes, whose results must come
back as at most 8 files of at most 16 MiB), and it runs the same code on a CPU at the
:data:`~igpt_eval.studies.settings.SMOKE_CAMPAIGN` size in seconds. The stages:

1. **data**: the dataset's splits at the model's resolution, a palette fitted on train, tokens;
2. **throughput pilot**: a throwaway copy of the model trains a few steps; their time fixes the
   step count, so that warm-up and cosine end inside the budget (:func:`make_plan`);
3. **pretraining** (:func:`igpt_eval.train.runs.pretrain`) in the scratch folder, keeping
   log-spaced snapshots and step 0 (the random-weights network);
4. **the weights** go into ``OUT/<name>/`` as soon as training ends, in bfloat16 when float32
   would not fit one file; every probe below reads the model from there, so the results are
   those of the weights as shipped;
5. **the final model on the full splits**: every layer, both pixel controls (the palette at
   the model's resolution, the native pixels), the multi-layer probe and the random-weights
   twin, with the paired contrasts (``OUT/results.csv``, ``OUT/predictions.npz``). This comes
   before the snapshots: if the call is cut off, the answer to "is the curve unimodal" is
   already home;
6. **every snapshot** on the main job's sample (``OUT/track.csv``, rewritten after each);
7. **fine-tuning** for the time asked (rows appended to ``OUT/results.csv``).

``OUT`` holds exactly: ``<name>/{model.safetensors, config.json, palette.npy, run.json,
train_log.csv}`` (a checkpoint folder; ``run.json`` also carries the campaign's settings,
plan, stage times and log, rewritten after every stage) and ``results.csv``, ``track.csv``,
``predictions.npz``. Snapshots, caches and resumable checkpoints stay in the scratch folder.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from igpt_eval.data import load_dataset, load_tokens
from igpt_eval.data.palette import Palette
from igpt_eval.data.source import DataSource
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.model.checkpoint import load_model, save_model
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.devices import resolve_device
from igpt_eval.model.igpt import IGPT
from igpt_eval.model.record import RunRecord
from igpt_eval.model.sources import resolve_model
from igpt_eval.names import Metric
from igpt_eval.predictions import Predictions, save_predictions
from igpt_eval.probes.logistic import probe_head
from igpt_eval.probes.paired import paired_rows
from igpt_eval.results import probe_init, summary, to_frame
from igpt_eval.studies.campaign_plan import Plan, make_plan, model_config, weight_dtype
from igpt_eval.studies.probe import probe_model
from igpt_eval.studies.settings import CampaignSettings, ProbeSettings, TrackSettings
from igpt_eval.studies.track import track_runs
from igpt_eval.train.finetune_runs import finetune_model
from igpt_eval.train.pretrain import TrainConfig, Trainer
from igpt_eval.train.runs import pretrain
from igpt_eval.train.settings import FinetuneConfig

logger = logging.getLogger(__name__)

#: Untimed pilot steps before the timed ones: allocator and kernel selection settle.
PILOT_WARMUP = 5
OUT_FILES = ("results.csv", "track.csv", "predictions.npz")


class Campaign:
    """One campaign's run: ``Campaign(settings, out, work).run()``; see the module docstring.

    ``out`` must not exist unless ``overwrite``; ``work`` is scratch (snapshots, caches,
    checkpoints), cleared first when ``overwrite``."""

    def __init__(
        self,
        settings: CampaignSettings,
        out: str | Path,
        work: str | Path,
        *,
        data_dir=None,
        overwrite: bool = False,
        command: str | None = None,
        dry_run: bool = False,
    ):
        settings.validate()
        model_config(settings)  # a shape that cannot be built fails before anything is written
        self.s, self.out, self.work = settings, Path(out), Path(work)
        self.command = command
        # Where every stage reads the images, and the tokens it keeps in the scratch folder.
        tokens = self.work / "tokens"
        self.source = DataSource(settings.dataset, data_dir, settings.split_seed, tokens)
        for path in (self.out, self.work):
            if path.exists() and not overwrite:
                raise IGPTError(f"{path} already exists; pass --overwrite to replace it")
        # A dry run plans for the device asked for, present or not.
        asked = settings.device if dry_run and settings.device != "auto" else None
        self.device = asked or str(resolve_device(settings.device))
        self.model_dir = self.out / settings.name
        self.record: dict = {
            "settings": _jsonable(dataclasses.asdict(settings)),
            "device": None if dry_run else _device_name(self.device),
            "torch": torch.__version__,
            "command": command,
            "status": "started",
            "stages": {},
            "log": [],
        }
        self._clear = overwrite

    # ------------------------------------------------------------------ bookkeeping
    def log(self, msg: str) -> None:
        logger.info("[campaign] %s", msg)
        self.record["log"].append(msg)

    def _save_record(self, status: str) -> None:
        self.record["status"] = status
        run = RunRecord.read(self.model_dir)
        dataclasses.replace(run, campaign=self.record).write(self.model_dir)

    def _stage(self, name: str, t0: float) -> None:
        self.record["stages"][name] = round(time.perf_counter() - t0, 2)
        self._save_record(f"{name} done")

    # ------------------------------------------------------------------ stages
    def data(self):
        """Splits at the model's resolution, the palette, the tokens."""
        s = self.s

        def split(name):
            return load_dataset(
                s.dataset, split=name, n_px=s.n_px, data_dir=self.source.data_dir, seed=s.split_seed
            )

        train, val = split("train"), split("val")
        palette = Palette.fit(train.images, s.vocab_size, seed=s.seed)
        tok = [load_tokens(d, palette, self.source.token_cache)
               for d in (train, val)]  # fmt: skip
        return train, val, palette, tok[0].tokens, tok[1].tokens

    def split_sizes(self) -> tuple[int, int, int]:
        """Images in the train, val and test splits, as the plan counts them (read at native
        size: nothing is resized or tokenised)."""
        s = self.s
        return tuple(
            len(load_dataset(s.dataset, split=n, data_dir=self.source.data_dir, seed=s.split_seed))
            for n in ("train", "val", "test")
        )

    def pilot(self, cfg: IGPTConfig, train_cfg: TrainConfig, tr, va) -> tuple[float, float]:
        """Seconds per training step and per validation, on a throwaway copy of the model."""
        n = self.s.pilot_steps
        torch.manual_seed(self.s.seed)
        steps = PILOT_WARMUP + n
        pilot_cfg = dataclasses.replace(train_cfg, steps=steps, snapshot_steps=())
        trainer = Trainer(IGPT(cfg), tr, va, pilot_cfg, self.work / "pilot")
        for _ in range(PILOT_WARMUP):
            trainer.train_step()
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            trainer.train_step()
        _sync(self.device)
        step_s = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        trainer.validate()
        _sync(self.device)
        return step_s, time.perf_counter() - t0

    def dry_run(self) -> Plan:
        """The plan, with an assumed step time (:data:`ASSUMED_RATE`), from the dataset's
        split sizes: nothing is trained or written."""
        return make_plan(self.s, self.split_sizes(), self.device)

    def run(self) -> Plan:
        """Every stage in turn; returns the plan the pilot fixed."""
        s, t_start = self.s, time.perf_counter()
        if self._clear:
            for path in [self.work, *(self.out / f for f in OUT_FILES), self.model_dir]:
                _remove(path)
        self.work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        train, val, palette, tr, va = self.data()
        cfg = model_config(s)
        sizes = self.split_sizes()
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self._stage("data", t0)
        self.log(f"data: {len(train):,} train / {len(val):,} val images at {s.n_px} px, "
                 f"palette of {palette.k} colours, on {self.record['device']}")  # fmt: skip

        t0 = time.perf_counter()
        base = TrainConfig(
            steps=1, batch_size=s.batch_size, lr=s.lr, grad_clip=s.grad_clip,
            bf16=torch.device(self.device).type == "cuda", seed=s.seed,
            eval_images=s.eval_images, device=self.device,
        )  # fmt: skip
        step_s, val_s = self.pilot(cfg, base, tr, va)
        plan = make_plan(s, sizes, self.device, step_s, val_s,
                         spent_seconds=time.perf_counter() - t0)  # fmt: skip
        self.record["plan"] = _jsonable({**dataclasses.asdict(plan), "model": cfg.to_dict()})
        for line in plan.lines():
            self.log(line)
        train_cfg = dataclasses.replace(
            base, steps=plan.steps, eval_every=plan.eval_every,
            checkpoint_every=max(1, plan.steps // 4), snapshot_steps=plan.snapshot_steps,
        )  # fmt: skip
        record = RunRecord(
            dataset=s.dataset, split_seed=s.split_seed, train_fingerprint=train.fingerprint,
            val_fingerprint=val.fingerprint, palette_hash=palette.hash, command=self.command,
        )  # fmt: skip
        run_dir = self.work / "run"
        res = pretrain(cfg, train_cfg, tr, va, run_dir, palette=palette, record=record)
        self.record["training"] = _jsonable(res)
        self.log(f"trained {plan.steps:,} steps in {res['seconds']:.0f} s: val loss "
                 f"{res['val_loss']:.4f} nats/token")  # fmt: skip
        self.ship(run_dir, palette)
        self._stage("pretraining", t0)

        t0 = time.perf_counter()
        final = self.final_probes()
        self._stage("final probes", t0)
        t0 = time.perf_counter()
        self.track(run_dir)
        self._stage("snapshots", t0)
        if s.finetune_min > 0:
            t0 = time.perf_counter()
            self.finetune(final, plan)
            self._stage("fine-tuning", t0)
        self.record["seconds"] = round(time.perf_counter() - t_start, 1)
        self._save_record("done")
        self.log(f"done in {self.record['seconds']:.0f} s -> {self.out}")
        return plan

    def ship(self, run_dir: Path, palette: Palette) -> None:
        """The trained weights (bf16 when float32 would not fit a file), config, palette,
        run record and training log into ``OUT/<name>``, before any probe."""
        net = load_model(run_dir)
        save_model(net, self.model_dir, palette, dtype=weight_dtype(net.n_params()))
        run = RunRecord.read(run_dir)
        dataclasses.replace(run, campaign=self.record).write(self.model_dir)
        shutil.copyfile(run_dir / "train_log.csv", self.model_dir / "train_log.csv")

    def _probe_settings(self, sizes) -> ProbeSettings:
        return ProbeSettings(
            train_size=sizes[0], val_size=sizes[1], test_size=sizes[2], device=self.device,
            seed=self.s.seed,
        )  # fmt: skip

    def final_probes(self) -> pd.DataFrame:
        """The shipped model on the final sample (default: the full splits) with every
        control and contrast; ``OUT/results.csv`` and ``OUT/predictions.npz``."""
        s = self.s
        probe = self._probe_settings(s.final_sizes).replace(
            native_pixels=True, concat_layers=s.concat_layers
        )
        twin = probe.replace(random_weights=True, pixels=False, native_pixels=False,
                             concat_layers=None)  # fmt: skip
        rows, predictions = [], Predictions()
        for name, settings in (("model", probe), ("random-weights twin", twin)):
            df, pred = probe_model(
                self.model_dir, self.source, settings, cache_dir=self.work / "activations" / name
            )
            rows.append(df[df.metric != Metric.DIFF])
            predictions.update(pred)
            if name == "model":
                self.label = str(df.model.iloc[0])  # the name every result row carries
            self.log(f"final probes, {name}: {_best_line(df)}")
        df = to_frame(pd.concat(rows, ignore_index=True))
        df = to_frame(pd.concat([df, to_frame(paired_rows(df, predictions, seed=s.seed))]))
        self._write_csv(df, "results.csv")
        save_predictions(predictions, self.out)
        for r in df[df.metric == Metric.DIFF].itertuples():
            self.log(f"{r.contrast}: {100 * r.value:+.2f} pp [{100 * r.ci_low:+.2f}, "
                     f"{100 * r.ci_high:+.2f}], McNemar p = {r.p_value:.3g}")  # fmt: skip
        return df

    def track(self, run_dir: Path) -> pd.DataFrame:
        """Every snapshot on the track sample; ``OUT/track.csv`` after each."""
        s, frames = self.s, []
        # Every snapshot on the track sample, without the pixel controls (the final probes
        # have them; they are the same at every step).
        probe = self._probe_settings(s.track_sizes).replace(pixels=False, native_pixels=False)
        settings = TrackSettings(probe)

        def keep(df: pd.DataFrame) -> None:
            frames.append(df)
            self._write_csv(to_frame(pd.concat(frames, ignore_index=True)), "track.csv")
            r = df.iloc[0]  # one snapshot: every row carries its step and loss
            self.log(f"track step {int(r.step)} (val loss {r.val_loss:.4f}): {_best_line(df)}")

        track_runs([run_dir], settings, dataset=self.source, on_snapshot=keep, name=s.name,
                   cache_dir=self.work / "activations" / "track")  # fmt: skip
        return pd.concat(frames, ignore_index=True)

    def finetune(self, final: pd.DataFrame, plan: Plan) -> None:
        """Fine-tune the shipped model for ``finetune_min`` minutes, the head on the layer
        chosen on validation and started at that layer's linear probe (its C, refitted on
        the probe's training images), as the shipped fine-tune was: a short run then starts
        from the probe's accuracy, not from a zero head. Its test rows are appended to
        ``OUT/results.csv``."""
        s = self.s
        weights = resolve_model(self.model_dir).weights_hash()
        layer, C, n_probe = probe_init(final, self.label, weights)
        seconds = s.finetune_min * 60
        # An upper bound only: the wall-clock cap ends the run (the rate is constant).
        steps = max(10, math.ceil(3 * seconds / plan.step_seconds))
        cfg = FinetuneConfig(
            steps=steps, batch_size=s.finetune_batch, lr=s.finetune_lr, warmup_steps=100,
            layer=layer, eval_every=s.finetune_eval_every, patience=4, eval_images=2000,
            bf16=torch.device(self.device).type == "cuda", seed=s.seed, device=self.device,
            max_seconds=seconds, init_C=C, init_n=n_probe,
        )  # fmt: skip
        df = finetune_model(self.model_dir, self.source, self.work / "finetune", cfg,
                            command=self.command, fit_head=probe_head)  # fmt: skip
        self._write_csv(to_frame(pd.concat([final, df], ignore_index=True)), "results.csv")
        acc = df[(df.split == "test") & (df.metric == "accuracy")]
        if len(acc):
            self.log(f"fine-tuned (head on layer {layer}): test {100 * acc.value.iloc[0]:.2f}%")

    def _write_csv(self, df: pd.DataFrame, name: str) -> None:
        with atomic_write(self.out / name, "w") as f:
            df.to_csv(f, index=False)


def _best_line(df: pd.DataFrame) -> str:
    s = summary(df[df.metric != Metric.DIFF])
    b, last = s[s.best].iloc[0], s[s["last"]].iloc[0]
    return (f"best layer (val) {b.layer}: test {100 * b.test_acc:.2f}%, last layer "
            f"{100 * last.test_acc:.2f}%")  # fmt: skip


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _jsonable(d):
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, list | tuple):
        return [_jsonable(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d
