"""The record a pretraining run leaves in its checkpoint folder: :class:`RunRecord`,
``run.json``.

It says which model was trained on which data with which settings, so that a resumed run
can be checked against it, and so that everything that later reads the model "on the split
it was trained on" (probes, the random-weights twin, model cards) finds that split and seed.
Written by :mod:`igpt_eval.train.runs` (a campaign adds its own record under ``campaign``)
and read here, below the training stage, because the model's readers need it.

A light module (no torch).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from igpt_eval.errors import IGPTError
from igpt_eval.io import read_json, split_record, write_json

RUN = "run.json"


@dataclass
class RunRecord:
    """A pretraining run's ``run.json``; every field is optional, since a folder may hold a
    model that was not trained here (then the record is empty)."""

    model_config: dict | None = None  # the IGPTConfig, as config.json holds it
    objective: str | None = None
    train_config: dict | None = None  # the TrainConfig, warm-up resolved to steps
    dataset: str | None = None  # the registry name it read
    split_seed: int | None = None  # its train/val split's (None: written before it was kept)
    palette_hash: str | None = None
    train_fingerprint: str | None = None
    val_fingerprint: str | None = None
    command: str | None = None  # the command that started it, as typed
    world_size: int | None = None  # processes (torchrun)
    campaign: dict | None = None  # a campaign's own record, when one trained it
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept

    @property
    def seed(self) -> int:
        """The seed the run drew its initialisation, batch order and masks with (0 when it
        records none). The random-weights twin is rebuilt from it."""
        return int((self.train_config or {}).get("seed") or 0)

    @property
    def data_seed(self) -> int:
        """The seed of the train/val split the run read: a record without one comes from a
        run whose one ``--seed`` seeded the split too."""
        return self.seed if self.split_seed is None else int(self.split_seed)

    def to_json(self) -> dict:
        """The ``run.json`` object: the fields that are set, and the unknown keys kept."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return {**d.pop("extra"), **d}

    @classmethod
    def from_json(cls, d: dict, where: str | os.PathLike = RUN) -> RunRecord:
        """The record of a ``run.json`` object; one :class:`IGPTError` if it is not one."""
        if not isinstance(d, dict):
            raise IGPTError(f"{where} must hold a JSON object")
        kw, extra = split_record(cls, d)
        return cls(**kw, extra=extra)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> RunRecord:
        """The record in ``folder`` (an empty one when the model was not trained here)."""
        f = Path(folder) / RUN
        return cls.from_json(read_json(f), f) if f.is_file() else cls()

    def write(self, folder: str | os.PathLike) -> None:
        """Write it as ``folder/run.json`` (atomically)."""
        write_json(Path(folder) / RUN, self.to_json())
