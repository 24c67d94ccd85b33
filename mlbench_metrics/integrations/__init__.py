"""Where training code already lives: one module per framework, each importing it lazily.

======================================================  ============================================
``mlbench_metrics.integrations.lightning.MLBenchLogger``  ``Trainer(logger=MLBenchLogger(...))``
``mlbench_metrics.integrations.transformers.MLBenchCallback``  ``Trainer(callbacks=[MLBenchCallback()])``
``mlbench_metrics.integrations.keras.MLBenchCallback``    ``model.fit(..., callbacks=[MLBenchCallback()])``
``mlbench_metrics.integrations.torch``                    CUDA-synchronised timers, gradient norms,
                                                          learning rates, a ``Tracker``
======================================================  ============================================

Importing this package imports no framework; importing one of its modules imports that
framework (and fails with its ImportError when it is not installed).
"""

from __future__ import annotations

__all__: list[str] = []
