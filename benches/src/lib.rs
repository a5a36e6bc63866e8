//! Benchmarks of the parameter server. Binaries only; see `src/bin/`.
