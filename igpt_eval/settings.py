"""What every frozen settings object shares (:class:`Settings`): a copy with some fields
changed, where a misspelt field name is an error naming the kind of setting.

The settings themselves live with the stage that reads them: extraction
(:mod:`igpt_eval.cache.settings`), the L-BFGS protocol (:class:`igpt_eval.probes.Protocol`)
and the studies (:mod:`igpt_eval.studies.settings`). Light: no torch, no numpy.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Self


class Settings:
    """A mixin for frozen dataclasses: :meth:`replace`. ``KIND`` names them in errors."""

    KIND: ClassVar[str] = "setting"

    def replace(self, **changes) -> Self:
        """A copy with ``changes`` (field names as keywords); a name that is no field is a
        :class:`TypeError`, as for a misspelt keyword argument."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"no {self.KIND} setting named {unknown[0]!r}")
        return dataclasses.replace(self, **changes) if changes else self
