"""``spa recover``: accuracy recovery by distillation (the optional extra ``spa[recover]``: torch, imported
on first use through :mod:`spa.recover.backend`)."""
