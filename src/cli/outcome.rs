//! What every `vdrive` command ends with, and the exit code that says it:
//! 0 for yes (done, healthy, nothing found), 1 for a definite no (unhealthy,
//! orphans found, no plan fits), 2 for a usage or operational error. Scripts
//! branch on the code; the answer itself is on stdout, diagnostics on stderr.

use std::process::ExitCode;

use serde_json::{Value, json};

/// Exit code of a yes.
pub const EXIT_YES: u8 = 0;
/// Exit code of a definite no.
pub const EXIT_NO: u8 = 1;
/// Exit code of a usage or operational error.
pub const EXIT_ERROR: u8 = 2;

/// Whether the answer is a yes or a definite no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Yes,
    No,
}

/// A command's answer: what `-o text` prints, what `-o json|yaml` print, and
/// whether it is a yes.
#[derive(Debug, Clone)]
pub struct Answer {
    pub verdict: Verdict,
    /// The human form, for stdout; may be empty (a daemon's clean exit).
    pub text: String,
    /// The structured form; a command without one prints its text under
    /// `-o json|yaml` as `{"message": …}`.
    pub data: Option<Value>,
    /// A diagnostic for stderr whatever the format (why a plan does not fit).
    pub note: Option<String>,
}

impl Answer {
    pub fn yes(text: impl Into<String>) -> Self {
        Self::new(Verdict::Yes, text)
    }

    pub fn no(text: impl Into<String>) -> Self {
        Self::new(Verdict::No, text)
    }

    /// A yes when `good`, a no otherwise.
    pub fn verdict(good: bool, text: impl Into<String>) -> Self {
        Self::new(if good { Verdict::Yes } else { Verdict::No }, text)
    }

    fn new(verdict: Verdict, text: impl Into<String>) -> Self {
        Self {
            verdict,
            text: text.into(),
            data: None,
            note: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.verdict {
            Verdict::Yes => EXIT_YES,
            Verdict::No => EXIT_NO,
        })
    }

    /// The structured form, or the text wrapped in an object.
    pub fn structured(&self) -> Value {
        self.data
            .clone()
            .unwrap_or_else(|| json!({ "message": self.text }))
    }
}

/// Why a command could not answer at all: exit 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Bad flags or arguments: the command line has to change.
    Usage,
    /// Something the command needed failed: a cluster, a socket, a file.
    Operational,
}

impl FailureKind {
    /// The `kind` of the JSON error object (`invalid_argument` is what
    /// `vdrive plan --json` has always said for bad flags).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Usage => "invalid_argument",
            FailureKind::Operational => "operational_error",
        }
    }
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Usage,
            message: message.into(),
        }
    }

    pub fn operational(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Operational,
            message: message.into(),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(EXIT_ERROR)
    }

    /// `{"error":{"kind":…,"message":…}}`
    pub fn to_json(&self) -> Value {
        json!({ "error": { "kind": self.kind.as_str(), "message": self.message } })
    }
}

/// The front ends' errors are messages; anything not said otherwise is
/// operational.
impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::operational(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Self::operational(message)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
