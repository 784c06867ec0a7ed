//! Replays the request logs in `testdata/<Request>/*.jsonl` (the format the agent's request log
//! writes): each file is one session against one policy, in order (stateful rules see the earlier
//! requests), and each line's `allowed` is the expected decision.
//!
//! The file name picks the policy: `default` (the built-in policy), `generated` (the policy for
//! `testdata/pod.yaml`), `generated-exec-logs` (the same with --allow-exec --allow-logs), `deny-all` (a policy that
//! mentions nothing).

use std::path::{Path, PathBuf};

use podvm_policy::{AgentPolicy, GenerateOptions, LogEntry, PolicyOrigin, generate};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn policy_for(name: &str) -> AgentPolicy {
    let manifest = std::fs::read_to_string(testdata().join("pod.yaml")).expect("read pod.yaml");
    let options = match name {
        "default" => return AgentPolicy::default_policy(),
        // A measured policy that mentions nothing: everything is denied (default deny).
        "deny-all" => {
            return AgentPolicy::new("package agent_policy\n", PolicyOrigin::Other(name.into()))
                .expect("compile");
        }
        "generated" => GenerateOptions::default(),
        "generated-exec-logs" => GenerateOptions {
            allow_exec: true,
            allow_logs: true,
            ..Default::default()
        },
        other => panic!(
            "testdata log {other}.jsonl: unknown policy name (default, deny-all, generated, generated-exec-logs)"
        ),
    };
    let generated = generate(&manifest, &options).expect("generate the policy for pod.yaml");
    AgentPolicy::new(&generated.rego, PolicyOrigin::Other(name.into()))
        .expect("compile the generated policy")
}

/// Every `<Request>/<policy>.jsonl` under testdata.
fn logs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(testdata()).expect("read testdata") {
        let dir = dir.expect("testdata entry").path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).expect("read a testdata dir") {
            let f = f.expect("testdata entry").path();
            if f.extension().is_some_and(|e| e == "jsonl") {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn replay_request_logs() {
    let logs = logs();
    assert!(
        logs.len() >= 18,
        "expected a log for every request type, found {}",
        logs.len()
    );
    let mut failures = Vec::new();
    let mut cases = 0;
    let (mut allowed, mut denied) = (0, 0);
    for log in &logs {
        let request_dir = log
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let mut policy = policy_for(log.file_stem().unwrap().to_str().unwrap());
        let text = std::fs::read_to_string(log).expect("read a log");
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let entry: LogEntry = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: not a log entry: {e}", log.display(), n + 1));
            let d = policy.evaluate(&entry.request_type, &entry.request);
            cases += 1;
            if entry.allowed {
                allowed += 1
            } else {
                denied += 1
            }
            let what = format!(
                "{}:{} ({})",
                log.strip_prefix(testdata()).unwrap().display(),
                n + 1,
                entry.description.as_deref().unwrap_or("")
            );
            if d.allowed != entry.allowed {
                failures.push(format!(
                    "{what}: expected allowed={}, got: {d}",
                    entry.allowed
                ));
            } else if let Some(fragment) = &entry.reason_contains
                && !d.reason.contains(fragment.as_str())
            {
                failures.push(format!("{what}: reason {:?} lacks {fragment:?}", d.reason));
            }
            if !d.allowed {
                assert!(
                    !d.message().contains('\n'),
                    "{what}: the denial is not one line"
                );
            }
            // Files are named after the request type they exercise (other lines set up state).
            let _ = &request_dir;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} replayed requests decided wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(allowed > 0 && denied > 0);
    eprintln!(
        "{cases} requests replayed from {} logs ({allowed} allowed, {denied} denied)",
        logs.len()
    );
}

/// Every request directory has both an allowed and a denied case for its own request type.
#[test]
fn every_request_type_has_allowed_and_denied_cases() {
    use std::collections::BTreeMap;
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for log in logs() {
        let request_dir = log
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let text = std::fs::read_to_string(&log).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let entry: LogEntry = serde_json::from_str(line).unwrap();
            if entry.request_type == request_dir {
                let e = seen.entry(request_dir.clone()).or_default();
                if entry.allowed {
                    e.0 = true
                } else {
                    e.1 = true
                }
            }
        }
    }
    let missing: Vec<_> = seen
        .iter()
        .filter(|(_, (a, d))| !(*a && *d))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "request types without both an allowed and a denied case: {missing:?}"
    );
    for t in [
        "CheckRequest",
        "GuestDetailsRequest",
        "CreateSandboxRequest",
        "DestroySandboxRequest",
        "CreateContainerRequest",
        "StartContainerRequest",
        "RemoveContainerRequest",
        "ExecProcessRequest",
        "SignalProcessRequest",
        "WaitProcessRequest",
        "WriteStreamRequest",
        "ReadStreamRequest",
        "CloseStdinRequest",
        "TtyWinResizeRequest",
        "StatsContainerRequest",
        "CopyFileRequest",
        "SetPolicyRequest",
        "PullImageRequest",
    ] {
        assert!(seen.contains_key(t), "no testdata/{t}/ log");
    }
}
