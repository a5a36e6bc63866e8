//! An embedded local cluster: S shards in this process, each serving real
//! gRPC on its own ephemeral port of 127.0.0.1.

use std::io;

use ps_proto::ClusterSpec;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use std::sync::Arc;

use crate::config::ShardConfig;
use crate::server::{ServeError, serve_shard};
use crate::shard::Shard;

/// Running shards of an embedded cluster. Dropping it stops the shards.
#[derive(Debug)]
pub struct LocalCluster {
    spec: ClusterSpec,
    registries: Vec<prometheus::Registry>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
}

impl LocalCluster {
    /// Starts `num_shards` shards with `template` (its `shard_id` and
    /// `num_shards` are set per shard) on the current Tokio runtime. Returns
    /// once every shard is accepting connections.
    pub async fn start(num_shards: u32, template: ShardConfig) -> io::Result<Self> {
        Self::start_with(num_shards, template, |config| Ok(Shard::new(config))).await
    }

    /// Like [`start`](Self::start), but every shard holds its share of the
    /// checkpoint `loaded` (re-partitioned if `num_shards` differs from the
    /// cluster that wrote it) and workers resume at its clock.
    pub async fn restore(
        num_shards: u32,
        template: ShardConfig,
        loaded: &crate::checkpoint::Loaded,
    ) -> io::Result<Self> {
        Self::start_with(num_shards, template, |config| {
            Shard::restore(config, loaded).map_err(io::Error::other)
        })
        .await
    }

    async fn start_with(
        num_shards: u32,
        template: ShardConfig,
        make: impl Fn(ShardConfig) -> io::Result<Shard>,
    ) -> io::Result<Self> {
        let mut listeners = Vec::new();
        for _ in 0..num_shards {
            listeners.push(TcpListener::bind(("127.0.0.1", 0)).await?);
        }
        let addrs =
            listeners.iter().map(|l| l.local_addr().map(|a| a.to_string())).collect::<io::Result<_>>()?;
        let spec = ClusterSpec { shards: addrs, split_threshold: template.split_threshold };
        let (mut stops, mut tasks, mut registries) = (Vec::new(), Vec::new(), Vec::new());
        for (id, listener) in listeners.into_iter().enumerate() {
            let config = ShardConfig { shard_id: id as u32, num_shards, ..template.clone() };
            config.validate().map_err(io::Error::other)?;
            let shard = Arc::new(make(config)?);
            registries.push(shard.metrics().registry().clone());
            let (stop, stopped) = oneshot::channel();
            stops.push(stop);
            tasks.push(tokio::spawn(serve_shard(listener, shard, async move {
                let _ = stopped.await;
            })));
        }
        Ok(Self { spec, registries, stops, tasks })
    }

    /// The cluster spec workers connect with.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The shards' metric registries (each labels its metrics with `shard`);
    /// serve them together with [`crate::metrics::serve`].
    pub fn registries(&self) -> &[prometheus::Registry] {
        &self.registries
    }

    /// Stops every shard and waits for them to finish.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            task.await.map_err(|e| ServeError::Config(format!("shard task failed: {e}")))??;
        }
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
