//! An OCI `linux.seccomp` profile compiled to classic BPF with `seccompiler`, in the agent (so a
//! bad profile fails `CreateContainer`), installed by the container helper last before `execve`.
//!
//! `seccompiler` builds filters with one match action each, so a profile becomes a stack of
//! filters, which the kernel evaluates together, keeping the most restrictive answer:
//! - one filter per distinct non-ALLOW action: the syscalls (and argument conditions) of that
//!   action → the action, anything else → ALLOW;
//! - one filter for the default action (unless it is ALLOW): any syscall a rule names (under its
//!   conditions) → ALLOW, anything else → the default action.
//!
//! A syscall matched by rules of two different actions gets the stricter one (libseccomp would
//! refuse such a profile). Supported: the actions ALLOW, ERRNO (with `errnoRet`, default EPERM),
//! KILL / KILL_THREAD, KILL_PROCESS, TRAP, TRACE, LOG; argument conditions EQ, NE, LT, LE, GT, GE
//! and MASKED_EQ on 64-bit values (conditions on the same argument become alternatives, as runc
//! does); the flags LOG and SPEC_ALLOW. NOTIFY and unknown actions, operators or flags are
//! errors. Syscall names unknown on this architecture are skipped (as runc does); `architectures`
//! is not used: the filter is for the native ABI, and syscalls of another ABI (i386) are killed.

use std::collections::BTreeMap;
use std::str::FromStr;

use podvm_protocols::oci::{LinuxSeccomp, LinuxSeccompArg, linux_syscall::ErrnoRet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

/// Why a seccomp profile cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("defaultAction is empty")]
    NoDefaultAction,
    #[error(
        "action {0:?} is not supported (supported: SCMP_ACT_ALLOW, _ERRNO, _KILL, _KILL_THREAD, _KILL_PROCESS, _TRAP, _TRACE, _LOG)"
    )]
    Action(String),
    #[error(
        "flag {0:?} is not supported (supported: SECCOMP_FILTER_FLAG_TSYNC, _LOG, _SPEC_ALLOW)"
    )]
    Flag(String),
    #[error("syscall {syscall:?}: operator {op:?} is not supported")]
    Operator { syscall: String, op: String },
    #[error("syscall {syscall:?}: argument index {index} is over 5")]
    ArgIndex { syscall: String, index: u64 },
    #[error("cannot compile the filter: {0}")]
    Compile(String),
}

/// The compiled profile: BPF filters installed in order, each instruction packed as
/// `code << 48 | jt << 40 | jf << 32 | k`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProgram {
    /// `SECCOMP_FILTER_FLAG_*` for `seccomp(2)`.
    pub flags: u32,
    pub filters: Vec<Vec<u64>>,
}

fn native_arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(target_arch = "riscv64")]
    return TargetArch::riscv64;
    #[cfg(not(any(target_arch = "aarch64", target_arch = "riscv64")))]
    return TargetArch::x86_64;
}

fn action(name: &str, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno),
        "SCMP_ACT_LOG" => SeccompAction::Log,
        other => return Err(SeccompError::Action(other.to_string())),
    })
}

fn condition(syscall: &str, arg: &LinuxSeccompArg) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.Index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| SeccompError::ArgIndex {
            syscall: syscall.to_string(),
            index: arg.Index,
        })?;
    let (op, value) = match arg.Op.as_str() {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, arg.Value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, arg.Value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, arg.Value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, arg.Value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, arg.Value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, arg.Value),
        // libseccomp: (arg & Value) == ValueTwo.
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(arg.Value), arg.ValueTwo),
        other => {
            return Err(SeccompError::Operator {
                syscall: syscall.to_string(),
                op: other.to_string(),
            });
        }
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| SeccompError::Compile(e.to_string()))
}

/// Rules of one syscall: `None` matches unconditionally.
type Rules = Option<Vec<SeccompRule>>;

fn merge(into: &mut BTreeMap<i64, Rules>, nr: i64, rules: &Rules) {
    match (into.get_mut(&nr), rules) {
        (Some(None), _) => {}
        (Some(existing), None) => *existing = None,
        (Some(Some(existing)), Some(new)) => existing.extend(new.iter().cloned()),
        (None, _) => {
            into.insert(nr, rules.clone());
        }
    }
}

fn filter(
    rules: &BTreeMap<i64, Rules>,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<Vec<u64>, SeccompError> {
    let rules = rules
        .iter()
        .map(|(nr, r)| (*nr, r.clone().unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, on_match, native_arch())
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    Ok(program
        .iter()
        .map(|i| {
            (u64::from(i.code) << 48)
                | (u64::from(i.jt) << 40)
                | (u64::from(i.jf) << 32)
                | u64::from(i.k)
        })
        .collect())
}

/// Compiles a profile; `None` when it filters nothing (default ALLOW and no other action).
pub fn compile(profile: &LinuxSeccomp) -> Result<Option<SeccompProgram>, SeccompError> {
    if profile.DefaultAction.is_empty() {
        return Err(SeccompError::NoDefaultAction);
    }
    let default = action(&profile.DefaultAction, None)?;
    let mut flags = 0u32;
    for flag in &profile.Flags {
        flags |= match flag.as_str() {
            // The helper is single-threaded when it installs the filter.
            "SECCOMP_FILTER_FLAG_TSYNC" => 0,
            "SECCOMP_FILTER_FLAG_LOG" => libc::SECCOMP_FILTER_FLAG_LOG as u32,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as u32,
            other => return Err(SeccompError::Flag(other.to_string())),
        };
    }

    // Per action (keyed by its BPF return value): syscall number → rules.
    let mut by_action: BTreeMap<u32, (SeccompAction, BTreeMap<i64, Rules>)> = BTreeMap::new();
    let mut named: BTreeMap<i64, Rules> = BTreeMap::new();
    let mut unknown = Vec::new();
    for sc in &profile.Syscalls {
        let errno = match sc.ErrnoRet {
            Some(ErrnoRet::Errnoret(e)) => Some(e),
            _ => None,
        };
        let act = action(&sc.Action, errno)?;
        for name in &sc.Names {
            let Ok(sysno) = syscalls::Sysno::from_str(name) else {
                unknown.push(name.as_str());
                continue;
            };
            let rules: Rules = if sc.Args.is_empty() {
                None
            } else {
                let conditions = sc
                    .Args
                    .iter()
                    .map(|a| condition(name, a))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut indexes: Vec<u64> = sc.Args.iter().map(|a| a.Index).collect();
                indexes.sort_unstable();
                indexes.dedup();
                // As runc: several conditions on one argument are alternatives, else all apply.
                let groups = if indexes.len() < sc.Args.len() {
                    conditions.into_iter().map(|c| vec![c]).collect()
                } else {
                    vec![conditions]
                };
                Some(
                    groups
                        .into_iter()
                        .map(|c| {
                            SeccompRule::new(c).map_err(|e| SeccompError::Compile(e.to_string()))
                        })
                        .collect::<Result<_, _>>()?,
                )
            };
            let nr = sysno.id() as i64;
            merge(&mut named, nr, &rules);
            let entry = by_action
                .entry(u32::from(act.clone()))
                .or_insert_with(|| (act.clone(), BTreeMap::new()));
            merge(&mut entry.1, nr, &rules);
        }
    }
    if !unknown.is_empty() {
        tracing::debug!(
            ?unknown,
            "seccomp: syscalls unknown on this architecture skipped"
        );
    }

    let mut filters = Vec::new();
    for (act, rules) in by_action.into_values() {
        if act != SeccompAction::Allow && !rules.is_empty() {
            filters.push(filter(&rules, SeccompAction::Allow, act)?);
        }
    }
    // Last: once it is in place, seccomp(2) itself may be denied.
    if default != SeccompAction::Allow {
        filters.push(filter(&named, default, SeccompAction::Allow)?);
    }
    Ok((!filters.is_empty()).then_some(SeccompProgram { flags, filters }))
}

/// Installs the program in the calling thread (the container helper's child, single-threaded).
pub fn install(program: &SeccompProgram) -> Result<(), nix::errno::Errno> {
    for packed in &program.filters {
        let insns: Vec<libc::sock_filter> = packed
            .iter()
            .map(|i| libc::sock_filter {
                code: (i >> 48) as u16,
                jt: (i >> 40) as u8,
                jf: (i >> 32) as u8,
                k: *i as u32,
            })
            .collect();
        let prog = libc::sock_fprog {
            len: u16::try_from(insns.len()).map_err(|_| nix::errno::Errno::E2BIG)?,
            filter: insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points to `insns`, which outlives the call; the kernel copies the filter.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                program.flags as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvm_protocols::oci::LinuxSyscall;

    fn syscall(names: &[&str], action: &str, errno: Option<u32>) -> LinuxSyscall {
        LinuxSyscall {
            Names: names.iter().map(|s| s.to_string()).collect(),
            Action: action.into(),
            ErrnoRet: errno.map(ErrnoRet::Errnoret),
            ..Default::default()
        }
    }

    #[test]
    fn profiles_become_filter_stacks() {
        // Default ALLOW with one ERRNO group: one filter.
        let deny_mkdir = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ALLOW".into(),
            Syscalls: vec![syscall(
                &["mkdir", "mkdirat", "no_such_syscall"],
                "SCMP_ACT_ERRNO",
                Some(1),
            )],
            ..Default::default()
        };
        let p = compile(&deny_mkdir).unwrap().unwrap();
        assert_eq!(p.filters.len(), 1);

        // Docker's shape: default ERRNO, an ALLOW list, a clone3 → ENOSYS group.
        let mut personality = syscall(&["personality"], "SCMP_ACT_ALLOW", None);
        personality.Args = vec![LinuxSeccompArg {
            Index: 0,
            Value: 8,
            Op: "SCMP_CMP_EQ".into(),
            ..Default::default()
        }];
        let docker = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ERRNO".into(),
            Syscalls: vec![
                syscall(
                    &["read", "write", "execve", "exit_group"],
                    "SCMP_ACT_ALLOW",
                    None,
                ),
                personality,
                syscall(&["clone3"], "SCMP_ACT_ERRNO", Some(38)),
            ],
            Flags: vec!["SECCOMP_FILTER_FLAG_SPEC_ALLOW".into()],
            ..Default::default()
        };
        let p = compile(&docker).unwrap().unwrap();
        assert_eq!(p.filters.len(), 2);
        assert_eq!(p.flags, libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as u32);

        // Nothing to filter.
        let allow = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ALLOW".into(),
            ..Default::default()
        };
        assert_eq!(compile(&allow).unwrap(), None);
    }

    #[test]
    fn unsupported_profiles_are_errors() {
        let notify = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ALLOW".into(),
            Syscalls: vec![syscall(&["mkdir"], "SCMP_ACT_NOTIFY", None)],
            ..Default::default()
        };
        assert!(matches!(compile(&notify), Err(SeccompError::Action(a)) if a == "SCMP_ACT_NOTIFY"));
        let mut bad_op = syscall(&["mkdir"], "SCMP_ACT_ERRNO", None);
        bad_op.Args = vec![LinuxSeccompArg {
            Index: 0,
            Op: "SCMP_CMP_SOMETIMES".into(),
            ..Default::default()
        }];
        let profile = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ALLOW".into(),
            Syscalls: vec![bad_op],
            ..Default::default()
        };
        let e = compile(&profile).unwrap_err().to_string();
        assert!(e.contains("SCMP_CMP_SOMETIMES"), "{e}");
        let flag = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ALLOW".into(),
            Flags: vec!["SECCOMP_FILTER_FLAG_NEW_LISTENER".into()],
            ..Default::default()
        };
        assert!(matches!(compile(&flag), Err(SeccompError::Flag(_))));
    }
}
