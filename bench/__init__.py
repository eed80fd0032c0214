"""The benchmark (docs/performance.md): run it with scripts/bench."""
