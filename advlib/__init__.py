"""advlib: adversarial robustness of object detectors, reproduced (MTD, CWAT, RobustDet, AdvAmd, RAD).

The architecture (data contract, the flow from data to notebooks, the layout, how to add a
paper) is in ``ARCHITECTURE.md`` at the project root.
"""

__version__ = "0.1.0"
