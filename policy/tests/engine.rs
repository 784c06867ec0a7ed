//! The engine's contract: default deny, engine errors never allow, `{allowed, ops}` state,
//! one-line reasons, the request log.

use podvm_policy::{AgentPolicy, LogEntry, PolicyError, PolicyOrigin};
use serde_json::json;

fn policy(rego: &str) -> AgentPolicy {
    AgentPolicy::new(rego, PolicyOrigin::Other("test".into())).unwrap()
}

#[test]
fn default_policy_compiles_and_allows_the_vm_test_calls() {
    let mut p = AgentPolicy::default_policy();
    for t in [
        "CheckRequest",
        "GuestDetailsRequest",
        "DestroySandboxRequest",
    ] {
        assert!(p.evaluate(t, &json!({})).allowed, "{t}");
    }
    let d = p.evaluate("UpdateInterfaceRequest", &json!({}));
    assert!(!d.allowed);
    assert_eq!(
        d.message(),
        "UpdateInterfaceRequest denied: the default policy does not mention UpdateInterfaceRequest (default deny) (rule data.agent_policy.UpdateInterfaceRequest)"
    );
}

#[test]
fn errors_and_odd_results_deny() {
    let rego = r#"package agent_policy
ExecProcessRequest := 1 / input.zero
StartContainerRequest := "yes"
CopyFileRequest := {"ops": []}
RemoveContainerRequest := {"allowed": true, "ops": [{"op": "remove", "path": "/nothing/here"}]}
WaitProcessRequest := {"allowed": true, "ops": "not a patch"}
SignalProcessRequest if input.signal == 9
"#;
    let mut p = policy(rego);
    for (t, input, want) in [
        (
            "ExecProcessRequest",
            json!({"zero": 0}),
            "policy evaluation failed",
        ),
        (
            "StartContainerRequest",
            json!({}),
            "must be a boolean or {allowed, ops}",
        ),
        ("CopyFileRequest", json!({}), "no boolean `allowed`"),
        (
            "RemoveContainerRequest",
            json!({}),
            "state update does not apply",
        ),
        ("WaitProcessRequest", json!({}), "not a JSON patch"),
        (
            "SignalProcessRequest",
            json!({"signal": 15}),
            "SignalProcessRequest is not allowed by the pod policy",
        ),
        ("../etc", json!({}), "does not mention"),
        ("", json!({}), "does not mention"),
    ] {
        let d = p.evaluate(t, &input);
        assert!(!d.allowed, "{t} allowed");
        assert!(d.reason.contains(want), "{t}: {}", d.reason);
        assert!(!d.message().contains('\n'), "{t}: {}", d.message());
    }
    assert!(
        p.evaluate("SignalProcessRequest", &json!({"signal": 9}))
            .allowed
    );
}

#[test]
fn stateful_rules_patch_the_state() {
    let rego = r#"package agent_policy
default CreateContainerRequest := false
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": concat("/", ["", "ids", input.container_id]), "value": true}]} if {
    not data.pstate.ids[input.container_id]
}
StartContainerRequest if data.pstate.ids[input.container_id]
"#;
    let mut p = policy(rego);
    // The first add needs /ids: the patch fails, so the request is denied and the state unchanged.
    let d = p.evaluate("CreateContainerRequest", &json!({"container_id": "a"}));
    assert!(!d.allowed && d.reason.contains("state update"), "{d}");
    assert_eq!(p.state(), &json!({}));

    // With the state prepared by an earlier op, the rule works.
    let rego3 = r#"package agent_policy
CreateContainerRequest := {"allowed": true, "ops": ops} if {
    not object.get(data.pstate, ["ids", input.container_id], false)
    ops := array.concat(init, [{"op": "add", "path": concat("/", ["", "ids", input.container_id]), "value": true}])
}
init := [] if data.pstate.ids
else := [{"op": "add", "path": "/ids", "value": {}}]
StartContainerRequest if data.pstate.ids[input.container_id]
"#;
    let mut p = policy(rego3);
    assert!(
        !p.evaluate("StartContainerRequest", &json!({"container_id": "a"}))
            .allowed
    );
    assert!(
        p.evaluate("CreateContainerRequest", &json!({"container_id": "a"}))
            .allowed
    );
    assert!(
        !p.evaluate("CreateContainerRequest", &json!({"container_id": "a"}))
            .allowed
    );
    assert!(
        p.evaluate("StartContainerRequest", &json!({"container_id": "a"}))
            .allowed
    );
    assert!(
        !p.evaluate("StartContainerRequest", &json!({"container_id": "b"}))
            .allowed
    );
    assert_eq!(p.state(), &json!({"ids": {"a": true}}));
}

#[test]
fn broken_policies_are_refused_at_load() {
    let e = AgentPolicy::new(
        "package agent_policy\nthis is not rego\n",
        PolicyOrigin::SetPolicy,
    )
    .unwrap_err();
    assert!(matches!(e, PolicyError::Compile { .. }), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
    let e = AgentPolicy::new(
        "package other\ndefault X := true\n",
        PolicyOrigin::SetPolicy,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("must be `package agent_policy`"),
        "{e}"
    );
}

#[test]
fn request_log_replays() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let mut p = AgentPolicy::default_policy();
    p.log_requests_to(&log).unwrap();
    p.evaluate("CopyFileRequest", &json!({"path": "/etc/shadow"}));
    p.evaluate(
        "CopyFileRequest",
        &json!({"path": "/run/podvm/shared/containers/x-hosts"}),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let entries: Vec<LogEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    assert!(!entries[0].allowed && entries[0].reason.contains("/etc/shadow"));
    assert!(entries[1].allowed);
    let mut fresh = AgentPolicy::default_policy();
    for e in &entries {
        assert_eq!(
            fresh.evaluate(&e.request_type, &e.request).allowed,
            e.allowed
        );
    }
}
