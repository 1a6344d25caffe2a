"""Training one cell: the engine and what it is made of.

``engine.train_cell`` reads as the flow: ``setup`` (data split, model, strategy, parameter groups,
optimizer) → ``batches`` (what each step is served) → ``loop`` (the steps, with step observers) →
``evaluation`` → ``record``. Beside them: the strategy contract (``strategy``), batch augmentation
on the device (``augment``), frozen networks' outputs computed once (``frozen``) and honest timing
and memory (``measure``).
"""
