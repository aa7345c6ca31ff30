"""Defaults shared by the library and the command line, each with the measurement behind it.

A light module (no torch, no numpy), so the CLI can show them in ``--help`` without paying
for the heavy imports.
"""

from __future__ import annotations

#: Images per forward pass when extracting features. Small batches keep a block's
#: activations in cache: on this project's 2-core AVX2 machine (32 MB L3) 16 images ran
#: 1.4-1.5x faster than 64 (one thread, the 16 px ``mini`` model), whose (64 x 256, 512) MLP
#: activations spill to memory.
EXTRACT_BATCH = 16
