"""When does bucket-level MOO beat tuned averaging? A fair fine-tuning benchmark.

Every arm (plain averaging at three sampling temperatures, static loss weights, five MOO
aggregators at bucket and global granularity with and without direction-only, and a
random-weights control) fine-tunes the same pretrained base in three regimes (balanced,
imbalanced, capacity-limited), with the same learning-rate sweep chosen on validation books
and five seeds judged on held-out test books. See docs/evidence.md for the results::

    python -m benchmarks.evidence                 # the full benchmark, resumable
    python -m benchmarks.evidence --quick         # a smoke run of the pipeline
"""
