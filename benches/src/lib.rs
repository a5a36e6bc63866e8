//! Benchmarks of the parameter server: the binaries in `src/bin/` (they start
//! `ps-server` processes through [`ps_server::process`]) and the criterion
//! kernels in `benches/`.

pub mod baselines;
pub mod models;
