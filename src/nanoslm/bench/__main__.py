"""The child-process entry of the benchmark: python -m nanoslm.bench --phase NAME --spec FILE --out FILE."""

from .phases import child_main

child_main()
