"""Training of trainable explainers: the generic part (``training.core``) and one module per method
(``training.tame``). The runnable scripts beside them (``train_tame.py``) only parse arguments.

Importable from the repository root (the scripts put it on ``sys.path``); not part of the installed ``engine``.
"""
