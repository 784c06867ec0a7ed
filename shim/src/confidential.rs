//! Confidential pods in the shim (`[tee] mode = "snp-emulated"`): the same chain as
//! `podvm pod run --tee snp-emulated` (see `podvm_host_runtime::pod`). The host's snapshot of
//! the image is never used: the VM starts with the pod's initdata bound into the launch
//! (HOST_DATA), and each container's image is pulled, verified, decrypted and unpacked inside
//! the guest after the agent has attested to the KBS.
//!
//! - Image: the `io.kubernetes.cri.image-name` annotation (the CRI plugin sets it).
//! - Initdata: the pod's `io.katacontainers.config.hypervisor.cc_init_data` annotation if it
//!   has one (its policy and KBS settings; measured, so the KBS sees what it was), else the
//!   default policy with the configuration's KBS settings.
//! - Egress: the guest reaches exactly the KBS and the image's registry through the host's
//!   relay.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use podvm_host_runtime::hypervisor::Hypervisor;
use podvm_host_runtime::launch::{EMULATED_FIRMWARE, TeeLaunch};
use podvm_host_runtime::pod::{self, KbsSettings, PolicyChoice};
use podvm_host_runtime::vm::{Vm, VmConfig};
use podvm_policy::InitData;

use crate::config::ShimConfig;

/// The CRI plugin's annotation naming a container's image.
pub const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

fn image_of(annotations: &BTreeMap<String, String>) -> anyhow::Result<&str> {
    annotations.get(CRI_IMAGE_NAME).map(String::as_str).ok_or_else(|| {
        anyhow::anyhow!(
            "a confidential pod pulls its image inside the guest: the container needs the {CRI_IMAGE_NAME} annotation (the CRI plugin sets it; with ctr run, pass --annotation {CRI_IMAGE_NAME}=REF)"
        )
    })
}

fn kbs_settings(shim: &ShimConfig) -> KbsSettings {
    KbsSettings {
        url: shim.tee.kbs_url.clone(),
        jwe_key_uris: shim.tee.image_key_uris.clone(),
        credentials_uri: Some(shim.tee.registry_credentials_uri.clone()).filter(|u| !u.is_empty()),
    }
}

/// The pod's initdata: its annotation, or the default policy with the configuration's settings.
pub fn initdata(
    shim: &ShimConfig,
    annotations: &BTreeMap<String, String>,
) -> anyhow::Result<InitData> {
    if let Some(value) = annotations.get(podvm_policy::initdata::ANNOTATION) {
        return InitData::from_annotation(value).with_context(|| {
            format!(
                "the pod's {} annotation is not valid initdata",
                podvm_policy::initdata::ANNOTATION
            )
        });
    }
    pod::build_initdata(
        &PolicyChoice::Default,
        image_of(annotations)?,
        &[],
        &[],
        Some(&kbs_settings(shim)),
        &shim.tee.insecure_registries,
    )
    .map_err(anyhow::Error::msg)
}

/// A running confidential pod: its configuration and the host services its guest may reach.
pub struct ConfidentialPod {
    pub shim: ShimConfig,
    /// `host:port`s of the egress relay's allow-list.
    pub egress: Vec<String>,
}

/// Boots the confidential pod VM (emulated SNP). The guest may reach the KBS, the first
/// container's registry and the configuration's plain-HTTP registries.
pub async fn start(
    shim: &ShimConfig,
    mut config: VmConfig,
    annotations: &BTreeMap<String, String>,
    backend: &dyn Hypervisor,
) -> anyhow::Result<(Vm, ConfidentialPod)> {
    let image = image_of(annotations)?;
    config.tee = TeeLaunch::SnpEmulated {
        psp_dir: podvm_host_runtime::paths::emulated_psp_dir(),
        firmware: shim.vm.guest_dir.join(EMULATED_FIRMWARE),
    };
    config.initdata = Some(initdata(shim, annotations)?);
    let mut egress =
        pod::egress_allow_list(&shim.tee.kbs_url, image, &shim.tee.insecure_registries)
            .map_err(anyhow::Error::msg)?;
    for registry in &shim.tee.insecure_registries {
        let endpoint = pod::registry_endpoint(registry, &shim.tee.insecure_registries);
        if !egress.contains(&endpoint) {
            egress.push(endpoint);
        }
    }
    config.egress = egress.clone();
    let vm = Vm::start(&config, backend).await?;
    Ok((
        vm,
        ConfidentialPod {
            shim: shim.clone(),
            egress,
        },
    ))
}

/// Attests (first time) and pulls `container_id`'s image inside the guest.
pub async fn pull(
    vm: &Vm,
    pod: &ConfidentialPod,
    container_id: &str,
    annotations: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let image = image_of(annotations)?;
    let shim = &pod.shim;
    let registry = pod::registry_endpoint(image, &shim.tee.insecure_registries);
    if !pod.egress.contains(&registry) {
        bail!(
            "image {image}: its registry {registry} is not reachable from this pod (reachable: {}); a pod pulls from its first container's registry and tee.insecure_registries",
            pod.egress.join(", ")
        );
    }
    let timeout = Duration::from_secs(shim.timeouts.image_pull_secs);
    let pulled = vm
        .agent()
        .pull_image(image, container_id, timeout)
        .await
        .with_context(|| format!("in-guest pull of {image}"))?;
    log::info!(
        "{container_id}: {image} pulled in the guest (attestation {} µs, pull {} µs)",
        pulled.attestation_us,
        pulled.pull_us
    );
    Ok(())
}
