"""The training stage: pretraining (:mod:`~igpt_eval.train.pretrain`), runs, resume and the
learning-rate sweep (:mod:`~igpt_eval.train.runs`), fine-tuning
(:mod:`~igpt_eval.train.finetune`, :mod:`~igpt_eval.train.finetune_runs`), ``torchrun``
helpers (:mod:`~igpt_eval.train.distributed`) and the allocator setting of training
processes (:mod:`~igpt_eval.train.malloc`).

Import what you need from its module, e.g. ``from igpt_eval.train.runs import pretrain``.
"""
