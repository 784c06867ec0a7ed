//! Appraisal of an `/attest` request (evidence verification by podvm-attestation, the
//! report_data binding, the init-data digest, reference values, TCB minimum, debug, optional
//! Rego) and the Rego resource policy (`data.policy.allow`; input = claims; data =
//! `{"resource-path": "<repo>/<type>/<tag>"}`).

use podvm_attestation::kbs_client::protocol::{
    Attestation, HOST_DATA_LEN, LAUNCH_HINT_KEY, MRCONFIGID_LEN, REPORT_DATA_LEN, Tee, b64_std,
    init_data_algorithm, init_data_field, report_data_digest,
};
use podvm_attestation::snp::TcbVersion;
use podvm_attestation::{Evidence, Expectations, TeeKind, TrustAnchors, verify};
use podvm_measured_boot::explain::{LaunchHint, explain_snp_mismatch};
use podvm_measured_boot::refvals::ReferenceValues;
use serde_json::{Value, json};

use crate::error::ApiError;

/// The resource policy used when none is configured: verified hardware evidence only.
pub const DEFAULT_RESOURCE_POLICY: &str = r#"package policy
import rego.v1

default allow := false

allow if {
    input.emulated == false
    input.tee != "sample"
}
"#;

/// Added to the default resource policy by `--allow-emulated`.
pub const ALLOW_EMULATED_RULE: &str = r#"
allow if {
    input.emulated == true
    input.tee == "snp"
}
"#;

/// Added to the default resource policy by `--allow-sample`.
pub const ALLOW_SAMPLE_RULE: &str = r#"
allow if input.tee == "sample"
"#;

/// A compiled Rego policy evaluated at `data.policy.allow`.
#[derive(Clone)]
pub struct RegoPolicy {
    engine: regorus::Engine,
    pub source: String,
}

impl RegoPolicy {
    pub fn new(name: &str, source: &str) -> Result<Self, String> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(name.to_string(), source.to_string())
            .map_err(|e| format!("{name}: {}", one_line(&e.to_string())))?;
        Ok(RegoPolicy {
            engine,
            source: source.to_string(),
        })
    }

    /// Evaluate `data.policy.allow`: `Ok(true)` only for a boolean true.
    pub fn allow(&self, input: &Value, data: Option<&Value>) -> Result<bool, String> {
        let mut e = self.engine.clone();
        let input = regorus::Value::from_json_str(&input.to_string())
            .map_err(|err| format!("policy input: {err}"))?;
        e.set_input(input);
        if let Some(d) = data {
            let d = regorus::Value::from_json_str(&d.to_string())
                .map_err(|err| format!("policy data: {err}"))?;
            e.add_data(d).map_err(|err| format!("policy data: {err}"))?;
        }
        let v = e
            .eval_rule("data.policy.allow".to_string())
            .map_err(|err| {
                format!(
                    "evaluating data.policy.allow: {}",
                    one_line(&err.to_string())
                )
            })?;
        Ok(v == regorus::Value::from(true))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The default resource policy for the given flags.
pub fn default_resource_policy(allow_emulated: bool, allow_sample: bool) -> String {
    let mut p = DEFAULT_RESOURCE_POLICY.to_string();
    if allow_emulated {
        p.push_str(ALLOW_EMULATED_RULE);
    }
    if allow_sample {
        p.push_str(ALLOW_SAMPLE_RULE);
    }
    p
}

/// Everything the appraisal needs (one immutable snapshot; admin writes swap it).
#[derive(Clone)]
pub struct Appraiser {
    pub anchors: TrustAnchors,
    pub allow_sample: bool,
    pub allow_debug: bool,
    pub min_snp_tcb: Option<TcbVersion>,
    pub require_tdx_collateral: bool,
    pub reference_values: Vec<ReferenceValues>,
    pub attestation_policy: Option<RegoPolicy>,
}

fn accepted(
    refs: &[ReferenceValues],
    pick: impl Fn(&ReferenceValues) -> Option<&String>,
) -> Vec<String> {
    let mut v: Vec<String> = refs
        .iter()
        .filter_map(|r| pick(r).map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn check_reference(field: &str, accepted: &[String], got: &str) -> Result<(), ApiError> {
    if accepted.is_empty() {
        return Err(ApiError::Measurement(format!(
            "no reference value {field} is loaded; give --reference-values <podvm measure export> or POST /kbs/v0/reference-values"
        )));
    }
    if accepted.iter().any(|a| a == got) {
        return Ok(());
    }
    Err(ApiError::Measurement(format!(
        "measurement mismatch ({field}): expected {}, got {got}; differing input unknown — run podvm measure diff on the launch inputs",
        accepted.join(" or ")
    )))
}

/// For an SNP measurement mismatch: if the guest sent a launch hint and re-measuring a reference
/// with it reproduces the signed measurement, the error names the differing input.
fn explain_snp(refs: &[ReferenceValues], att: &Attestation, measured: &str) -> Option<ApiError> {
    let hint = att
        .tee_evidence
        .primary_evidence
        .get(LAUNCH_HINT_KEY)
        .and_then(|v| serde_json::from_value::<LaunchHint>(v.clone()).ok())?;
    refs.iter()
        .filter(|r| r.measurements.snp_launch_measurement.is_some())
        .find_map(|r| explain_snp_mismatch(r, &hint, measured))
        .map(|why| {
            ApiError::Measurement(format!(
                "measurement mismatch (snp_launch_measurement {}…): {why}",
                &measured[..measured.len().min(16)]
            ))
        })
}

impl Appraiser {
    /// Appraise one `/attest` request for a session of TEE `tee`; returns the claims.
    pub fn appraise(&self, tee: Tee, att: &Attestation) -> Result<Value, ApiError> {
        let rt = &att.runtime_data;
        let digest = report_data_digest(
            &rt.nonce,
            &rt.tee_pubkey,
            &att.tee_evidence.additional_evidence,
        )
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        let kind = match tee {
            Tee::Snp => TeeKind::Snp,
            Tee::Tdx => TeeKind::Tdx,
            Tee::Sample => return self.appraise_sample(att, &digest),
            other => {
                return Err(ApiError::TeeNotAccepted(format!(
                    "TEE {other:?} is not supported by this KBS (snp, tdx, sample)"
                )));
            }
        };
        let bytes = serde_json::to_vec(&att.tee_evidence.primary_evidence)
            .map_err(|e| ApiError::InvalidRequest(format!("primary_evidence: {e}")))?;
        let evidence =
            Evidence::from_json(kind, &bytes).map_err(|e| ApiError::Evidence(e.to_string()))?;
        let exp = Expectations {
            allow_debug: self.allow_debug,
            min_snp_tcb: self.min_snp_tcb,
            require_tdx_collateral: self.require_tdx_collateral,
            ..Default::default()
        };
        let claims = verify(&evidence, &exp, &self.anchors)
            .map_err(|e| ApiError::Evidence(e.to_string()))?;

        // The binding: REPORT_DATA = SHA-384(canonical runtime data) ‖ zero padding.
        let mut want_rd = digest.clone();
        want_rd.resize(REPORT_DATA_LEN, 0);
        let want_rd = hex::encode(want_rd);
        if claims.report_data != want_rd {
            return Err(ApiError::ReportDataUnbound {
                expected: want_rd,
                got: claims.report_data.clone(),
            });
        }

        // init-data: digest (algorithm named in the TOML) == HOST_DATA / MRCONFIGID.
        if let Some(init) = &att.init_data {
            if init.format != "toml" {
                return Err(ApiError::InitData(format!(
                    "init-data format {:?} is not supported (toml)",
                    init.format
                )));
            }
            let (len, field) = match kind {
                TeeKind::Snp => (HOST_DATA_LEN, "HOST_DATA"),
                TeeKind::Tdx => (MRCONFIGID_LEN, "MRCONFIGID"),
            };
            let alg =
                init_data_algorithm(&init.body).map_err(|e| ApiError::InitData(e.to_string()))?;
            let want = hex::encode(
                init_data_field(&init.body, len).map_err(|e| ApiError::InitData(e.to_string()))?,
            );
            if claims.init_data != want {
                return Err(ApiError::InitData(format!(
                    "init-data digest mismatch: {alg:?} of the init-data TOML is {want} but {field} is {}; the VM was launched with other init-data",
                    claims.init_data
                )));
            }
        }

        // Reference values (the measured-boot export).
        let refs = &self.reference_values;
        match kind {
            TeeKind::Snp => {
                let acc = accepted(refs, |r| r.measurements.snp_launch_measurement.as_ref());
                if let Err(e) = check_reference("snp_launch_measurement", &acc, &claims.measurement)
                {
                    return Err(explain_snp(refs, att, &claims.measurement).unwrap_or(e));
                }
            }
            TeeKind::Tdx => {
                check_reference(
                    "mr_td",
                    &accepted(refs, |r| r.measurements.mr_td.as_ref()),
                    &claims.measurement,
                )?;
                for (name, key) in [("rtmr_1", "rtmr1"), ("rtmr_2", "rtmr2")] {
                    let acc = accepted(refs, |r| match name {
                        "rtmr_1" => r.measurements.rtmr_1.as_ref(),
                        _ => r.measurements.rtmr_2.as_ref(),
                    });
                    if !acc.is_empty() {
                        let got = claims
                            .details
                            .get(key)
                            .and_then(|v| v.as_str())
                            .unwrap_or("");
                        check_reference(name, &acc, got)?;
                    }
                }
            }
        }

        let claims = claims.to_json();
        self.run_attestation_policy(&claims)?;
        Ok(claims)
    }

    fn appraise_sample(&self, att: &Attestation, digest: &[u8]) -> Result<Value, ApiError> {
        if !self.allow_sample {
            return Err(ApiError::TeeNotAccepted(
                "TEE sample (no hardware evidence) is not accepted; start podvm-kbs with --allow-sample to test with it".into(),
            ));
        }
        let pe = &att.tee_evidence.primary_evidence;
        let got = pe.get("report_data").and_then(|v| v.as_str()).unwrap_or("");
        let want = b64_std(digest);
        if got != want {
            return Err(ApiError::ReportDataUnbound {
                expected: want,
                got: got.to_string(),
            });
        }
        let claims = json!({
            "tee": "sample",
            "emulated": true,
            "measurement": "",
            "init_data": "",
            "report_data": hex::encode(digest),
            "debug": false,
            "details": {"svn": pe.get("svn").cloned().unwrap_or(Value::Null)},
        });
        self.run_attestation_policy(&claims)?;
        Ok(claims)
    }

    fn run_attestation_policy(&self, claims: &Value) -> Result<(), ApiError> {
        if let Some(p) = &self.attestation_policy {
            match p.allow(claims, None) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(ApiError::AttestationPolicy(
                        "the configured Rego attestation policy (data.policy.allow) is not true for these claims".into(),
                    ));
                }
                Err(e) => return Err(ApiError::AttestationPolicy(e)),
            }
        }
        Ok(())
    }
}

/// Parse `bl=3,tee=0,snp=8,ucode=115[,fmc=0]`.
pub fn parse_tcb(s: &str) -> Result<TcbVersion, String> {
    let mut t = TcbVersion {
        fmc: None,
        bootloader: 0,
        tee: 0,
        snp: 0,
        microcode: 0,
    };
    for kv in s.split(',').filter(|x| !x.trim().is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("{kv:?} is not name=value (bl, tee, snp, ucode, fmc)"))?;
        let v: u8 = v.trim().parse().map_err(|e| format!("{k}: {e}"))?;
        match k.trim() {
            "bl" | "bootloader" => t.bootloader = v,
            "tee" => t.tee = v,
            "snp" => t.snp = v,
            "ucode" | "microcode" => t.microcode = v,
            "fmc" => t.fmc = Some(v),
            other => {
                return Err(format!(
                    "unknown TCB component {other:?} (bl, tee, snp, ucode, fmc)"
                ));
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_resource_policy_by_flags() {
        let hw = json!({"tee": "snp", "emulated": false});
        let emu = json!({"tee": "snp", "emulated": true});
        let sample = json!({"tee": "sample", "emulated": true});
        let strict =
            RegoPolicy::new("d.rego", &default_resource_policy(false, false)).expect("rego");
        assert!(strict.allow(&hw, None).expect("eval"));
        assert!(!strict.allow(&emu, None).expect("eval"));
        assert!(!strict.allow(&sample, None).expect("eval"));
        let e = RegoPolicy::new("d.rego", &default_resource_policy(true, false)).expect("rego");
        assert!(e.allow(&emu, None).expect("eval"));
        assert!(!e.allow(&sample, None).expect("eval"));
        let s = RegoPolicy::new("d.rego", &default_resource_policy(false, true)).expect("rego");
        assert!(s.allow(&sample, None).expect("eval"));
        assert!(!s.allow(&emu, None).expect("eval"));
    }

    #[test]
    fn data_resource_path_and_bad_rego() {
        let p = RegoPolicy::new(
            "p.rego",
            "package policy\nimport rego.v1\ndefault allow := false\nallow if data[\"resource-path\"] == \"a/b/c\"\n",
        )
        .expect("rego");
        assert!(
            p.allow(&json!({}), Some(&json!({"resource-path": "a/b/c"})))
                .expect("eval")
        );
        assert!(
            !p.allow(&json!({}), Some(&json!({"resource-path": "a/b/d"})))
                .expect("eval")
        );
        assert!(RegoPolicy::new("bad.rego", "package policy\nallow if {").is_err());
    }

    #[test]
    fn tcb_parse() {
        let t = parse_tcb("bl=3,tee=0,snp=8,ucode=115").expect("tcb");
        assert_eq!((t.bootloader, t.snp, t.microcode, t.fmc), (3, 8, 115, None));
        assert!(parse_tcb("bl=300").is_err());
        assert!(parse_tcb("x=1").is_err());
    }
}
