"""asv benchmarks: capture overhead, memory, materialization and graph scaling, each headline
figure a ratio to eager measured in the same process."""
