//! `containerd-shim-podvm-v2`: containerd's runtime v2 shim for podvm. Each task runs in a pod
//! VM of its own (`ctr run --runtime io.containerd.podvm.v2 IMAGE ID CMD...`).
//!
//! This first cut is the non-confidential path: containerd unpacks the image on the host and the
//! shim hands the guest a read-only disk of the rootfs ([`rootfs`]). The confidential path (the
//! image pulled, decrypted and unpacked inside the guest, as `podvm pod run` does) is not wired
//! into the shim yet.

mod config;
mod rootfs;
mod spec;
mod task;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, ExitSignal, Flags, Shim, StartOpts};

/// The runtime's name in containerd.
const RUNTIME_ID: &str = "io.containerd.podvm.v2";

struct PodvmShim {
    namespace: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for PodvmShim {
    type T = task::TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        PodvmShim {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // One shim (and VM) per task.
        let grouping = opts.id.clone();
        let address = containerd_shim::spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // The shim died: its VM died with it (PR_SET_PDEATHSIG), and the next podvm launch
        // sweeps its state directory. The bundle's rootfs disk goes with the bundle.
        let _ = std::fs::remove_file(rootfs::IMAGE_FILE);
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: Some(containerd_shim::util::timestamp().unwrap_or_default()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        // A broken configuration fails each Create with its reason (no silent defaults).
        let config = config::ShimConfig::load().map_err(|e| format!("{e:#}"));
        task::TaskService::new(self.namespace.clone(), config, publisher, self.exit.clone())
    }
}

#[tokio::main]
async fn main() {
    let config = Config {
        // The shim reaps its own children (QEMU, vhost-device-vsock, mkfs): a reaper that waits
        // for any child would steal their exit statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<PodvmShim>(RUNTIME_ID, Some(config)).await;
}
