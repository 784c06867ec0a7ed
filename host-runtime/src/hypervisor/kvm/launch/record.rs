//! [`RecordingLaunchOps`]: a [`LaunchOps`] that records every call, and the replays that fold
//! a recording into the SNP launch digest ([`replay_snp`]) or the TDX MRTD ([`replay_tdx`]) with
//! `podvm_measured_boot`'s own primitives.

use podvm_measured_boot::snp::{LaunchDigest, VMSA_GPA};
use podvm_measured_boot::tdx::tdvf::MrtdBuilder;
use podvm_measured_boot::vmsa::{ResetState, build_vmsa_for_state};
use podvm_measured_boot::{SnpMeasurement, SnpPageType};

use super::snp::SEV_FEATURE_SNP_ACTIVE;
use super::{LaunchOps, OpFailure, OpResult, PAGE_SIZE, PrivateRegion, SnpFinish, TdxInitVm};

/// One recorded launch operation (successful; a failed one is not recorded).
#[derive(Debug, Clone, PartialEq)]
pub enum LaunchCall {
    AddPrivateRegion {
        slot: u32,
        gpa: u64,
        size: u64,
    },
    SetMemoryPrivate {
        gpa: u64,
        size: u64,
    },
    SnpInit {
        vmsa_features: u64,
        ghcb_version: u16,
    },
    SnpLaunchStart {
        policy: u64,
        gosvw: [u8; 16],
        flags: u16,
    },
    /// The bytes KVM would copy into private memory and the PSP measure, in page order.
    SnpLaunchUpdate {
        gfn_start: u64,
        page_type: SnpPageType,
        bytes: Vec<u8>,
    },
    SetVcpuResetState {
        vcpu: u32,
        state: ResetState,
    },
    SnpLaunchFinish(SnpFinish),
    TdxInitVm(TdxInitVm),
    TdxInitVcpu {
        vcpu: u32,
        rcx: u64,
    },
    /// The bytes the TDX module would add (and, if `measure`, extend into MRTD).
    TdxInitMemRegion {
        gpa: u64,
        measure: bool,
        bytes: Vec<u8>,
    },
    TdxFinalizeVm,
}

impl LaunchCall {
    /// The ioctl this call stands for.
    pub fn ioctl(&self) -> &'static str {
        match self {
            LaunchCall::AddPrivateRegion { .. } => "KVM_SET_USER_MEMORY_REGION2",
            LaunchCall::SetMemoryPrivate { .. } => "KVM_SET_MEMORY_ATTRIBUTES",
            LaunchCall::SnpInit { .. } => "KVM_SEV_INIT2",
            LaunchCall::SnpLaunchStart { .. } => "KVM_SEV_SNP_LAUNCH_START",
            LaunchCall::SnpLaunchUpdate { .. } => "KVM_SEV_SNP_LAUNCH_UPDATE",
            LaunchCall::SetVcpuResetState { .. } => "KVM_SET_SREGS",
            LaunchCall::SnpLaunchFinish(_) => "KVM_SEV_SNP_LAUNCH_FINISH",
            LaunchCall::TdxInitVm(_) => "KVM_TDX_INIT_VM",
            LaunchCall::TdxInitVcpu { .. } => "KVM_TDX_INIT_VCPU",
            LaunchCall::TdxInitMemRegion { .. } => "KVM_TDX_INIT_MEM_REGION",
            LaunchCall::TdxFinalizeVm => "KVM_TDX_FINALIZE_VM",
        }
    }
}

/// Records every launch operation; optionally fails the `n`-th one (1-based), like a kernel
/// returning an error there.
#[derive(Debug, Default)]
pub struct RecordingLaunchOps {
    calls: Vec<LaunchCall>,
    attempts: usize,
    fail_at: Option<usize>,
}

impl RecordingLaunchOps {
    /// A recorder that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder whose `step`-th operation (1-based) fails with `EIO`.
    pub fn failing_at(step: usize) -> Self {
        RecordingLaunchOps {
            fail_at: Some(step),
            ..Self::default()
        }
    }

    /// The successful calls, in order.
    pub fn calls(&self) -> &[LaunchCall] {
        &self.calls
    }

    /// Operations attempted (including a failed one).
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// Takes the recording.
    pub fn into_calls(self) -> Vec<LaunchCall> {
        self.calls
    }

    fn record(&mut self, call: LaunchCall) -> OpResult {
        self.attempts += 1;
        if self.fail_at == Some(self.attempts) {
            return Err(OpFailure(format!(
                "EIO (injected by the recorder at step {})",
                self.attempts
            )));
        }
        self.calls.push(call);
        Ok(())
    }
}

impl LaunchOps for RecordingLaunchOps {
    fn add_private_region(&mut self, r: &PrivateRegion) -> OpResult {
        self.record(LaunchCall::AddPrivateRegion {
            slot: r.slot,
            gpa: r.gpa,
            size: r.size,
        })
    }

    fn set_memory_private(&mut self, gpa: u64, size: u64) -> OpResult {
        self.record(LaunchCall::SetMemoryPrivate { gpa, size })
    }

    fn snp_init(&mut self, vmsa_features: u64, ghcb_version: u16) -> OpResult {
        self.record(LaunchCall::SnpInit {
            vmsa_features,
            ghcb_version,
        })
    }

    fn snp_launch_start(&mut self, policy: u64, gosvw: [u8; 16], flags: u16) -> OpResult {
        self.record(LaunchCall::SnpLaunchStart {
            policy,
            gosvw,
            flags,
        })
    }

    fn snp_launch_update(
        &mut self,
        gfn_start: u64,
        source: &[u8],
        page_type: SnpPageType,
    ) -> OpResult {
        self.record(LaunchCall::SnpLaunchUpdate {
            gfn_start,
            page_type,
            bytes: source.to_vec(),
        })
    }

    fn set_vcpu_reset_state(&mut self, vcpu: u32, state: &ResetState) -> OpResult {
        self.record(LaunchCall::SetVcpuResetState {
            vcpu,
            state: *state,
        })
    }

    fn snp_launch_finish(&mut self, finish: &SnpFinish) -> OpResult {
        self.record(LaunchCall::SnpLaunchFinish(finish.clone()))
    }

    fn tdx_init_vm(&mut self, init: &TdxInitVm) -> OpResult {
        self.record(LaunchCall::TdxInitVm(init.clone()))
    }

    fn tdx_init_vcpu(&mut self, vcpu: u32, rcx: u64) -> OpResult {
        self.record(LaunchCall::TdxInitVcpu { vcpu, rcx })
    }

    fn tdx_init_mem_region(&mut self, gpa: u64, source: &[u8], measure: bool) -> OpResult {
        self.record(LaunchCall::TdxInitMemRegion {
            gpa,
            measure,
            bytes: source.to_vec(),
        })
    }

    fn tdx_finalize_vm(&mut self) -> OpResult {
        self.record(LaunchCall::TdxFinalizeVm)
    }
}

/// Why a recording cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The recording is not a complete launch of the expected kind.
    #[error("recorded launch is malformed at call {index}: {detail}")]
    Malformed { index: usize, detail: String },
}

fn malformed(index: usize, detail: impl Into<String>) -> ReplayError {
    ReplayError::Malformed {
        index,
        detail: detail.into(),
    }
}

/// Folds a recorded SNP launch into the launch digest the PSP computes: each
/// `SNP_LAUNCH_UPDATE` page in order (`LaunchDigest::update_page`, i.e. SHA-384 of NORMAL pages,
/// zero for the others), then at `SNP_LAUNCH_FINISH` one VMSA page per vCPU, in vCPU index
/// order, at GPA `0xFFFFFFFFF000`, built from the recorded reset state with the `KVM_SEV_INIT2`
/// features plus SNPActive (as KVM builds it).
pub fn replay_snp(calls: &[LaunchCall]) -> Result<SnpMeasurement, ReplayError> {
    let mut ld = LaunchDigest::new();
    let mut features: Option<u64> = None;
    let mut started = false;
    let mut vcpus: Vec<(u32, ResetState)> = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        match call {
            LaunchCall::SnpInit { vmsa_features, .. } => {
                features = Some(vmsa_features | SEV_FEATURE_SNP_ACTIVE)
            }
            LaunchCall::SnpLaunchStart { .. } => {
                if features.is_none() {
                    return Err(malformed(i, "SNP_LAUNCH_START before KVM_SEV_INIT2"));
                }
                started = true;
            }
            LaunchCall::SnpLaunchUpdate {
                gfn_start,
                page_type,
                bytes,
            } => {
                if !started {
                    return Err(malformed(i, "SNP_LAUNCH_UPDATE before SNP_LAUNCH_START"));
                }
                if bytes.is_empty() || bytes.len() % PAGE_SIZE != 0 {
                    return Err(malformed(
                        i,
                        format!("update of {} bytes is not whole pages", bytes.len()),
                    ));
                }
                for (p, page) in bytes.chunks_exact(PAGE_SIZE).enumerate() {
                    let gpa = (gfn_start + p as u64) * PAGE_SIZE as u64;
                    ld.update_page(*page_type, gpa, page);
                }
            }
            LaunchCall::SetVcpuResetState { vcpu, state } => {
                vcpus.retain(|(v, _)| v != vcpu);
                vcpus.push((*vcpu, *state));
            }
            LaunchCall::SnpLaunchFinish(_) => {
                let Some(features) = features else {
                    return Err(malformed(i, "SNP_LAUNCH_FINISH before KVM_SEV_INIT2"));
                };
                vcpus.sort_by_key(|(v, _)| *v);
                for (v, state) in &vcpus {
                    let vmsa = build_vmsa_for_state(state, features).ok_or_else(|| {
                        malformed(
                            i,
                            format!("vCPU {v} reset state {state:?} is not a reset state"),
                        )
                    })?;
                    ld.update_page(SnpPageType::Vmsa, VMSA_GPA, &vmsa[..]);
                }
                if i + 1 != calls.len() {
                    return Err(malformed(i + 1, "calls after SNP_LAUNCH_FINISH"));
                }
                return Ok(ld.value());
            }
            LaunchCall::AddPrivateRegion { .. } | LaunchCall::SetMemoryPrivate { .. } => {}
            other => {
                return Err(malformed(i, format!("{} in an SNP launch", other.ioctl())));
            }
        }
    }
    Err(malformed(calls.len(), "no SNP_LAUNCH_FINISH"))
}

/// Folds a recorded TDX launch into MRTD: each `KVM_TDX_INIT_MEM_REGION` page in order is one
/// TDH.MEM.PAGE.ADD and, with `KVM_TDX_MEASURE_MEMORY_REGION`, its 16 TDH.MR.EXTENDs
/// (`MrtdBuilder`, the primitive `podvm measure --mode tdx` uses).
pub fn replay_tdx(calls: &[LaunchCall]) -> Result<[u8; 48], ReplayError> {
    let mut mrtd = MrtdBuilder::new();
    let mut initialised = false;
    for (i, call) in calls.iter().enumerate() {
        match call {
            LaunchCall::TdxInitVm(_) => initialised = true,
            LaunchCall::TdxInitVcpu { .. } => {}
            LaunchCall::TdxInitMemRegion {
                gpa,
                measure,
                bytes,
            } => {
                if !initialised {
                    return Err(malformed(i, "INIT_MEM_REGION before KVM_TDX_INIT_VM"));
                }
                if bytes.is_empty() || bytes.len() % PAGE_SIZE != 0 {
                    return Err(malformed(
                        i,
                        format!("region of {} bytes is not whole pages", bytes.len()),
                    ));
                }
                for (p, page) in bytes.chunks_exact(PAGE_SIZE).enumerate() {
                    let mut buf = [0u8; PAGE_SIZE];
                    buf.copy_from_slice(page);
                    mrtd.add_page(gpa + (p * PAGE_SIZE) as u64, &buf, *measure);
                }
            }
            LaunchCall::TdxFinalizeVm => {
                if i + 1 != calls.len() {
                    return Err(malformed(i + 1, "calls after KVM_TDX_FINALIZE_VM"));
                }
                return Ok(mrtd.finish());
            }
            LaunchCall::AddPrivateRegion { .. } | LaunchCall::SetMemoryPrivate { .. } => {}
            other => {
                return Err(malformed(i, format!("{} in a TDX launch", other.ioctl())));
            }
        }
    }
    Err(malformed(calls.len(), "no KVM_TDX_FINALIZE_VM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_fails_exactly_at_the_requested_step() {
        let mut r = RecordingLaunchOps::failing_at(2);
        assert!(r.snp_init(0, 2).is_ok());
        let e = r.snp_launch_start(0x30000, [0; 16], 0).unwrap_err();
        assert!(e.0.contains("step 2"), "{e}");
        assert_eq!(r.calls().len(), 1);
        assert_eq!(r.attempts(), 2);
        assert!(r.tdx_finalize_vm().is_ok());
    }

    #[test]
    fn replay_rejects_incomplete_or_mixed_recordings() {
        assert!(replay_snp(&[]).is_err());
        let start_first = [LaunchCall::SnpLaunchStart {
            policy: 0,
            gosvw: [0; 16],
            flags: 0,
        }];
        assert!(
            replay_snp(&start_first)
                .unwrap_err()
                .to_string()
                .contains("before KVM_SEV_INIT2")
        );
        assert!(replay_tdx(&[LaunchCall::TdxFinalizeVm, LaunchCall::TdxFinalizeVm]).is_err());
        let mixed = [LaunchCall::SnpInit {
            vmsa_features: 0,
            ghcb_version: 2,
        }];
        assert!(
            replay_tdx(&mixed)
                .unwrap_err()
                .to_string()
                .contains("in a TDX launch")
        );
    }

    #[test]
    fn tdx_replay_is_page_add_then_extends_per_page() {
        let page = [0x5au8; PAGE_SIZE];
        let calls = [
            LaunchCall::TdxInitVm(TdxInitVm::default()),
            LaunchCall::TdxInitMemRegion {
                gpa: 0xffff_e000,
                measure: true,
                bytes: [page, page].concat(),
            },
            LaunchCall::TdxInitMemRegion {
                gpa: 0x80_0000,
                measure: false,
                bytes: vec![0; PAGE_SIZE],
            },
            LaunchCall::TdxFinalizeVm,
        ];
        let mut want = MrtdBuilder::new();
        want.page_add(0xffff_e000);
        want.extend_page(0xffff_e000, &page);
        want.page_add(0xffff_f000);
        want.extend_page(0xffff_f000, &page);
        want.page_add(0x80_0000);
        assert_eq!(replay_tdx(&calls).unwrap(), want.finish());
    }
}
