//! `podvm image pull <ref> --dest DIR`: the guest's image puller run on the host, for tests and
//! for users preparing images. One progress bar per layer, or JSON progress events (`--json`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use podvm_guest_agent::image::{
    AuthJson, ImagePuller, PrivateKeyProvider, ProgressEvent, ProgressFn, PullOptions,
};

#[derive(Args)]
pub struct PullArgs {
    /// Image reference: registry/repository[:tag][@sha256:digest].
    pub reference: String,
    /// Directory to unpack the flattened rootfs into (must not exist, or be empty).
    #[arg(long)]
    pub dest: PathBuf,
    /// Private key (PEM/DER) for skopeo/ocicrypt JWE-encrypted layers; repeatable.
    #[arg(long = "decryption-key")]
    pub decryption_keys: Vec<PathBuf>,
    /// Print progress as JSON lines on stdout instead of progress bars.
    #[arg(long)]
    pub json: bool,
    /// Talk plain HTTP to the registry (loopback test registries only).
    #[arg(long)]
    pub insecure_http: bool,
    /// Concurrent layer downloads.
    #[arg(long, default_value_t = 3)]
    pub concurrency: usize,
    /// Blob store to reuse across pulls (default: a temporary one next to --dest, removed after).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Registry credentials as a docker auth.json (`{"auths":{"host":{"auth":"..."}}}`).
    #[arg(long)]
    pub auth_file: Option<PathBuf>,
}

/// Per-layer progress bars.
struct Bars {
    multi: MultiProgress,
    layers: Mutex<Vec<Option<ProgressBar>>>,
}

impl Bars {
    fn bar(&self, index: usize, size: u64, digest: &str) -> ProgressBar {
        let mut layers = self.layers.lock().expect("progress lock");
        if layers.len() <= index {
            layers.resize(index + 1, None);
        }
        layers[index]
            .get_or_insert_with(|| {
                let style = ProgressStyle::with_template(
                    "{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .expect("static template");
                let short = digest
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect::<String>();
                self.multi
                    .add(ProgressBar::new(size))
                    .with_style(style)
                    .with_prefix(format!("layer {index} {short}"))
            })
            .clone()
    }

    fn event(&self, ev: &ProgressEvent) {
        match ev {
            ProgressEvent::Resolved {
                manifest_digest,
                layers,
                total_size,
                ..
            } => {
                let _ = self.multi.println(format!(
                    "{manifest_digest}: {layers} layers, {total_size} bytes"
                ));
            }
            ProgressEvent::LayerDownloading {
                index,
                digest,
                size,
            } => {
                self.bar(*index, *size, digest).set_message("downloading");
            }
            ProgressEvent::LayerProgress {
                index,
                digest,
                downloaded,
                size,
            } => {
                self.bar(*index, *size, digest).set_position(*downloaded);
            }
            ProgressEvent::LayerDownloaded {
                index,
                digest,
                cached,
            } => {
                let bar = self.bar(*index, 0, digest);
                if let Some(len) = bar.length() {
                    bar.set_position(len);
                }
                bar.set_message(if *cached { "cached" } else { "downloaded" });
            }
            ProgressEvent::LayerUnpacked {
                index,
                digest,
                encrypted,
            } => {
                let bar = self.bar(*index, 0, digest);
                bar.finish_with_message(if *encrypted {
                    "decrypted, unpacked"
                } else {
                    "unpacked"
                });
            }
            ProgressEvent::Done { rootfs, .. } => {
                let _ = self.multi.println(format!("unpacked into {rootfs}"));
            }
        }
    }
}

pub async fn run(args: PullArgs) -> Result<()> {
    let opts = PullOptions {
        insecure_http: args.insecure_http,
        concurrency: args.concurrency.max(1),
        ..Default::default()
    };
    let (store, temporary_store) = match &args.store {
        Some(s) => (s.clone(), false),
        None => {
            let name = args
                .dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let parent = args
                .dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            (
                parent.join(format!(".{name}.blobs-{}", std::process::id())),
                true,
            )
        }
    };
    let mut puller = ImagePuller::new(&store, opts)?;
    if !args.decryption_keys.is_empty() {
        let keys = PrivateKeyProvider::from_files(&args.decryption_keys)?;
        puller = puller.with_key_provider(Arc::new(keys));
    }
    if let Some(auth) = &args.auth_file {
        let json = std::fs::read(auth)
            .with_context(|| format!("cannot read --auth-file {}", auth.display()))?;
        puller = puller.with_credentials(Arc::new(AuthJson::new(json.into())));
    }
    let progress: ProgressFn = if args.json {
        Arc::new(|ev: &ProgressEvent| {
            if let Ok(line) = serde_json::to_string(ev) {
                println!("{line}");
            }
        })
    } else {
        let bars = Bars {
            multi: MultiProgress::new(),
            layers: Mutex::new(Vec::new()),
        };
        Arc::new(move |ev: &ProgressEvent| bars.event(ev))
    };
    puller = puller.with_progress(progress);
    let started = std::time::Instant::now();
    let result = puller.pull(&args.reference, &args.dest).await;
    if temporary_store {
        let _ = std::fs::remove_dir_all(&store);
    }
    let image = result?;
    if !args.json {
        eprintln!(
            "pulled {} ({}) in {:.1} s",
            args.reference,
            image.manifest_digest,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
