"""Where a model's images come from: :class:`DataSource`.

A registered dataset's name with the folder its files are in, the seed of its train/val
split and the root of its token caches: everything :func:`igpt_eval.extract` needs to turn
"the val split" into tokens, as one object the stages pass down instead of four keywords.
(:class:`~igpt_eval.data.formats.Source` is something else: a dataset's arrays as read from
disk.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from igpt_eval.errors import IGPTError


@dataclass(frozen=True)
class DataSource:
    """A dataset to read splits of. ``None`` fields are filled where the model is known:
    the dataset and split seed of the run that trained it (its ``run.json``), the user
    cache's ``tokens/`` folder (:func:`igpt_eval.defaults.cache_root`)."""

    name: str | None = None  # a registry name ("fashion-mnist", "npz:PATH", ...)
    data_dir: str | os.PathLike | None = None  # where the dataset's files are
    split_seed: int | None = None  # the train/val split's seed
    token_cache: str | os.PathLike | None = None  # root of the token caches

    @classmethod
    def of(cls, dataset) -> DataSource:
        """``dataset`` as a source: a name (or ``None``) becomes ``DataSource(name)``; a
        source is itself."""
        if dataset is None or isinstance(dataset, str):
            return cls(dataset)
        if isinstance(dataset, cls):
            return dataset
        raise IGPTError(f"a dataset is a registry name or a DataSource, not {type(dataset)!r}")
