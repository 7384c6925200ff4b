//! What a check found: its name, ok / warn / fail, what is wrong (or right),
//! and the command that fixes it.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// The fixed-width tag of the text report.
    pub fn tag(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check that found it, e.g. `node-plugin`.
    pub check: &'static str,
    /// What it is about when a check looks at many things (a node's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub status: Status,
    pub message: String,
    /// The command (or commands, `; `-separated) that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            check,
            subject: None,
            status: Status::Ok,
            message: message.into(),
            fix: None,
        }
    }

    pub fn warn(
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding::ok(check, message).with(Status::Warn, fix)
    }

    pub fn fail(
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding::ok(check, message).with(Status::Fail, fix)
    }

    /// About one thing among many (a node).
    pub fn on(mut self, subject: impl Into<String>) -> Finding {
        self.subject = Some(subject.into());
        self
    }

    fn with(mut self, status: Status, fix: impl Into<String>) -> Finding {
        self.status = status;
        let fix = fix.into();
        self.fix = (!fix.is_empty()).then_some(fix);
        self
    }
}

/// Every finding of one run, in the order the checks ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn add(&mut self, findings: impl IntoIterator<Item = Finding>) {
        self.findings.extend(findings);
    }

    pub fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// No check failed (warnings are allowed).
    pub fn passed(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// One line per finding, its fix indented under it, and a summary line.
    pub fn render_text(&self) -> String {
        let label = |f: &Finding| match &f.subject {
            Some(subject) => format!("{} {subject}", f.check),
            None => f.check.to_string(),
        };
        let width = self
            .findings
            .iter()
            .map(|f| label(f).len())
            .max()
            .unwrap_or(0);
        let mut out = Vec::new();
        for f in &self.findings {
            out.push(format!(
                "{:<4}  {:<width$}  {}",
                f.status.tag(),
                label(f),
                f.message
            ));
            if let Some(fix) = &f.fix {
                out.push(format!("{:<4}  {:<width$}  fix: {fix}", "", ""));
            }
        }
        let warnings = self.count(Status::Warn);
        out.push(format!(
            "{} findings: {} ok, {warnings} {}, {} failed",
            self.findings.len(),
            self.count(Status::Ok),
            if warnings == 1 { "warning" } else { "warnings" },
            self.count(Status::Fail)
        ));
        out.join("\n")
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "passed": self.passed(),
            "summary": {
                "ok": self.count(Status::Ok),
                "warn": self.count(Status::Warn),
                "fail": self.count(Status::Fail),
            },
            "findings": self.findings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_fails_the_report_and_a_warning_does_not() {
        let mut report = Report::default();
        report.add([Finding::ok("csi-driver", "installed")]);
        report.add([Finding::warn("pools", "vm pool at 80%", "")]);
        assert!(report.passed());
        assert_eq!(report.findings[1].fix, None);
        report.add([Finding::fail("drives", "no drives", "vdrive sign").on("n1")]);
        assert!(!report.passed());
        let text = report.render_text();
        assert!(text.contains("FAIL  drives n1   no drives"), "{text}");
        assert!(text.contains("fix: vdrive sign"), "{text}");
        assert!(
            text.ends_with("3 findings: 1 ok, 1 warning, 1 failed"),
            "{text}"
        );
        let json = report.to_json();
        assert_eq!(json["passed"], false);
        assert_eq!(json["findings"][2]["subject"], "n1");
        assert_eq!(json["findings"][2]["status"], "fail");
    }
}
