"""`tether bench`: end-to-end throughput and latency, always beside a baseline measured in
the same run so every figure is a ratio (these machines are shared and noisy)."""
