//! Policy evaluations per second: CreateContainerRequest against the policy generated for
//! `testdata/pod.yaml` (the decision an agent makes for every container it starts).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podvm_policy::{AgentPolicy, GenerateOptions, PolicyOrigin, generate};

fn create_container(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let manifest = std::fs::read_to_string(dir.join("pod.yaml")).expect("read testdata/pod.yaml");
    let generated = generate(&manifest, &GenerateOptions::default()).expect("generate the policy");
    let request: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("CreateContainerRequest/web.json"))
            .expect("read the request"),
    )
    .expect("request JSON");
    let policy = AgentPolicy::new(&generated.rego, PolicyOrigin::Other("generated".into()))
        .expect("compile");

    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    group.bench_function("CreateContainerRequest (generated policy, allowed)", |b| {
        b.iter_batched(
            || {
                AgentPolicy::new(policy.rego(), PolicyOrigin::Other("generated".into()))
                    .expect("compile")
            },
            |mut p| {
                let d = p.evaluate("CreateContainerRequest", &request);
                assert!(d.allowed, "{d}");
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let mut denied = request.clone();
    denied["OCI"]["Process"]["Env"]
        .as_array_mut()
        .expect("Env")
        .push("LD_PRELOAD=/x.so".into());
    let mut p =
        AgentPolicy::new(policy.rego(), PolicyOrigin::Other("generated".into())).expect("compile");
    group.bench_function("CreateContainerRequest (generated policy, denied)", |b| {
        b.iter(|| {
            let d = p.evaluate("CreateContainerRequest", &denied);
            assert!(!d.allowed);
        })
    });
    group.finish();
}

criterion_group!(benches, create_container);
criterion_main!(benches);
