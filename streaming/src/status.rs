//! How a session's outcome is told to the client on the error stream: a Kubernetes
//! `metav1.Status` JSON from protocol v4 on, plain text (only on failure) before.

use serde_json::json;

/// How an exec or attach session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with this code (0 is success).
    Exited(i32),
    /// The session failed; the message is for the client.
    Failed(String),
}

/// The v4+ Status JSON.
pub fn status_json(outcome: &Outcome) -> Vec<u8> {
    let v = match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => {
            // The client parses the cause as an unsigned 8-bit number; a code outside
            // it is still a failure, so it becomes 255 rather than wrapping to 0.
            let code = if (1..=255).contains(code) { *code } else { 255 };
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
        Outcome::Failed(msg) => json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "code": 500,
        }),
    };
    v.to_string().into_bytes()
}

/// The pre-v4 error text: nothing on success.
pub fn status_text(outcome: &Outcome) -> Option<Vec<u8>> {
    match outcome {
        Outcome::Exited(0) => None,
        Outcome::Exited(code) => Some(
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes(),
        ),
        Outcome::Failed(msg) => Some(msg.clone().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(o: &Outcome) -> serde_json::Value {
        serde_json::from_slice(&status_json(o)).unwrap()
    }

    #[test]
    fn v4_json() {
        assert_eq!(
            parse(&Outcome::Exited(0)),
            json!({"metadata": {}, "status": "Success"})
        );
        let f = parse(&Outcome::Exited(3));
        assert_eq!(f["status"], "Failure");
        assert_eq!(f["reason"], "NonZeroExitCode");
        assert_eq!(
            f["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "3"})
        );
        for odd in [300, -1] {
            assert_eq!(
                parse(&Outcome::Exited(odd))["details"]["causes"][0]["message"],
                "255"
            );
        }
        let e = parse(&Outcome::Failed("boom".into()));
        assert_eq!(
            (e["status"].as_str(), e["message"].as_str()),
            (Some("Failure"), Some("boom"))
        );
        assert_eq!(status_text(&Outcome::Exited(0)), None);
    }
}
