"""dermsort.train: data readers, grouped splits, training, threshold calibration and evaluation.

Entry points for other parts: ``models.build_model`` / ``checkpoint.load_checkpoint`` (export, bench: the one checkpoint contract),
``metrics`` (bench), ``torch_backend.TorchBackend`` (the runtime's torch reference backend).
Nothing heavy is imported here, so ``import dermsort.train.data`` stays cheap.
"""
