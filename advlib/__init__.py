"""advlib: adversarial robustness of object detectors, reproduced (MTD, CWAT, RobustDet, AdvAmd, RAD).

The flow is one-directional: ``data -> models -> losses -> attacks -> train -> evaluate``.
See ``DESIGN.md`` for the data contract: images are float ``[B, 3, H, W]`` in ``[0, 1]``,
targets are dicts with ``boxes`` (xyxy, absolute pixels of the model input) and ``labels``
(``1..C``, 0 is background).
"""

__version__ = "0.1.0"
