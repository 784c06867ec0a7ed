//! The podvm guest agent: PID 1 of a pod VM.
//!
//! - [`container`]: containers in the guest (namespaces, rootfs, seccomp, cgroups, stdio);
//! - [`init`]: PID 1 duties (mount the API filesystems, reap zombies, power off);
//! - [`guest_info`]: what the guest is (kernel, memory, vCPUs, TEE), read from /proc and /sys;
//! - [`policy_gate`]: every host request checked by the agent policy before it is handled;
//! - [`initdata`]: the pod's initdata, checked against the TEE evidence at start;
//! - [`emulated_tee`]: SNP evidence from the host's emulated PSP (`podvm.tee=snp-emulated`);
//! - [`egress`]: the guest's relay to host-loopback services (KBS, registries) over vsock;
//! - [`pod_image`]: the pod's image pulls: initdata settings, KBS keys, [`image::ImagePuller`];
//! - [`storage`]: block-device storages a `CreateContainer` names (the shim's rootfs disk);
//! - [`service`]: the ttrpc services of the agent API (`grpc.Health`, `grpc.AgentService`);
//! - [`transport`]: how the host reaches the services (vsock, both directions; Unix socket for tests).

pub mod container;
pub mod copy_file;
pub mod egress;
pub mod emulated_tee;
pub mod guest_info;
pub mod image;
pub mod init;
pub mod initdata;
pub mod pod_image;
pub mod policy_gate;
pub mod service;
pub mod storage;
pub mod transport;

/// The agent's version, reported by `Health.Version` and `GetGuestDetails`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
