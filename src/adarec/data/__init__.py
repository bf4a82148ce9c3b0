"""Interaction data: readers (one per source format), preprocessing, splits and statistics.

``prepare`` turns a ``DataConfig`` into ``PreparedData`` (chronological item sequences with
internal ids 1..N, 0 = padding); ``splits`` cuts them into training windows and the
leave-one-out validation and test sets.
"""
