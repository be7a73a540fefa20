//! The result of an exec or attach on the error stream: a metav1.Status in JSON for
//! `v4`/`v5.channel.k8s.io` (client-go turns `NonZeroExitCode` back into the exit code), the bare
//! message for older protocols (nothing at all on success).

use serde::Serialize;

use super::RuntimeError;

#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

/// How a streamed command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Exited { code: i32, cmd: Vec<String> },
    Attached,
    Failed(RuntimeError),
}

impl Outcome {
    /// The metav1.Status JSON of the v4 protocol.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let success = Status {
            metadata: Empty {},
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: None,
        };
        let status = match self {
            Outcome::Exited { code: 0, .. } | Outcome::Attached => success,
            Outcome::Exited { code, .. } => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("NonZeroExitCode"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: Some("ExitCode"),
                        message: code.to_string(),
                    }],
                }),
                code: None,
            },
            Outcome::Failed(e) => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("InternalError"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: None,
                        message: e.0.clone(),
                    }],
                }),
                code: Some(500),
            },
        };
        serde_json::to_vec(&status).expect("a status always serializes")
    }

    /// The plain message of the pre-v4 protocols; `None` on success.
    pub(crate) fn message(&self) -> Option<String> {
        match self {
            Outcome::Exited { code: 0, .. } | Outcome::Attached => None,
            // kubelet's wording, with the runtime's "error executing command [...]" inside
            Outcome::Exited { code, cmd } => Some(format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                cmd.join(" ")
            )),
            Outcome::Failed(e) => Some(format!("Internal error occurred: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_what_client_go_decodes() {
        let ok = Outcome::Exited {
            code: 0,
            cmd: vec!["true".into()],
        };
        assert_eq!(ok.to_json(), br#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(ok.message(), None);
        let seven = Outcome::Exited {
            code: 7,
            cmd: vec!["sh".into(), "-c".into(), "exit 7".into()],
        };
        assert_eq!(
            String::from_utf8(seven.to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 7], exit code 7","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#
        );
        let failed = Outcome::Failed(RuntimeError("container c not found".into()));
        assert_eq!(
            String::from_utf8(failed.to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: container c not found","reason":"InternalError","details":{"causes":[{"message":"container c not found"}]},"code":500}"#
        );
    }
}
