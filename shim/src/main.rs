//! `containerd-shim-podvm-v2`: containerd's runtime v2 shim for podvm. One shim and one pod VM
//! per CRI sandbox (its containers join it); anything else (`ctr run`) gets a VM of its own.
//!
//! - [`task`]: the task service over the pod VM's agent;
//! - [`config`]: `/etc/podvm/configuration*.toml` (the runtime's `ConfigPath`);
//! - [`spec`]: the OCI runtime spec → the agent's requests;
//! - [`rootfs`]: containerd's rootfs → a read-only disk (the pod's first container) or
//!   `CopyFile` (containers that join);
//! - [`confidential`]: confidential pods, whose images are pulled inside the guest;
//! - [`metrics`]: the agent's cgroup stats → containerd's metrics.

mod confidential;
mod config;
mod metrics;
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
        // One shim (and VM) per pod: the containers of a CRI sandbox share their sandbox's shim
        // (containerd starts the shim in the bundle directory); anything else (`ctr run`) gets
        // a VM of its own.
        let grouping = std::fs::read("config.json")
            .ok()
            .and_then(|json| spec::annotations(&json).ok())
            .and_then(|a| a.get(spec::CRI_SANDBOX_ID).cloned())
            .unwrap_or_else(|| opts.id.clone());
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
        // The configuration is read at Create, from the file containerd's runtime options name;
        // a broken one fails that Create with its reason (no silent defaults).
        task::TaskService::new(self.namespace.clone(), publisher, self.exit.clone())
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
    // Not returning from main: the runtime's drop would wait for blocking threads, and a FIFO
    // open whose other side never came (a client that went away) blocks forever.
    std::process::exit(0);
}
