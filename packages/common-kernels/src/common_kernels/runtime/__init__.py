"""The plumbing the method packages share, apart from the kernels.

``files`` (atomic writes, image reading, size strings), ``errors`` (:class:`InvalidArgument`,
the one exception type for a bad argument), ``cli`` (error printing, shared flags, signals),
``batch`` (folders of inputs), ``hub`` (the one rule for hub ids and offline loading),
``progress`` and ``lightning`` (bars and the interrupt checkpoint of a training run), ``photos``
(metadata-preserving image writes), ``quiet`` (library chatter while loading), ``configs``
(dataclass configs to and from dicts), ``bench`` (the benchmark scripts' device, precision and
report helpers), ``app`` (what every package's Gradio page shares), ``testing`` and ``browser``
(helpers for the packages' tests; ``browser`` drives their pages in Chromium). None of them
imports a kernel module; the kernels import only ``progress`` from here.
"""
