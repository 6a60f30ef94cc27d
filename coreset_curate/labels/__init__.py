"""Labels and their noise: the noise audit (``audit``, its counting core ``counts``), its
HTML and Markdown report (``report``), label noise injected for benchmarks (``noise``), and
labels tables, cleaning and exclusions (``cleaning``)."""
