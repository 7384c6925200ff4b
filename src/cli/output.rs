//! `-o text|json|yaml`, shared by the commands that answer something, and the
//! one place an answer or a failure is printed.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::Value;

use super::outcome::{Answer, Failure};

/// How an answer is printed on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: a table or a report.
    #[default]
    Text,
    /// One JSON document, indented.
    Json,
    /// One YAML document.
    Yaml,
}

/// The output flags of a command that answers something.
#[derive(Debug, Clone, Default, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Deprecated: the same as `-o json`, kept for existing scripts.
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    pub fn format(&self) -> Format {
        if self.json { Format::Json } else { self.output }
    }
}

/// Prints a command's result in `format` and says how the process exits.
pub fn emit(result: Result<Answer, Failure>, format: Format) -> ExitCode {
    match result {
        Ok(answer) => {
            if let Some(note) = &answer.note {
                eprintln!("{note}");
            }
            let printed = match format {
                Format::Text => Ok(answer.text.clone()),
                Format::Json | Format::Yaml => render(&answer.structured(), format),
            };
            match printed {
                Ok(out) => {
                    print_document(&out);
                    answer.exit_code()
                }
                Err(failure) => fail(&failure, format),
            }
        }
        Err(failure) => fail(&failure, format),
    }
}

/// A failure on stderr; under `-o json|yaml` also as an error object on
/// stdout, so a script that parses stdout always gets a document.
fn fail(failure: &Failure, format: Format) -> ExitCode {
    eprintln!("vdrive: {}", failure.message);
    if format != Format::Text {
        if let Ok(out) = render(&failure.to_json(), format) {
            print_document(&out);
        }
    }
    failure.exit_code()
}

/// Writes the answer to stdout. A reader that went away (`| head`) is not an
/// error of the command: what it wanted it has, so this never panics as
/// `println!` would on a closed pipe.
fn print_document(out: &str) {
    use std::io::Write;
    if !out.is_empty() {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", out.trim_end()).and_then(|()| stdout.flush());
    }
}

/// A value as (indented) JSON or YAML; text has no rendering of its own.
pub fn render(value: &Value, format: Format) -> Result<String, Failure> {
    match format {
        Format::Json | Format::Text => serde_json::to_string_pretty(value)
            .map_err(|e| Failure::operational(format!("cannot write the answer as JSON: {e}"))),
        Format::Yaml => serde_norway::to_string(value)
            .map_err(|e| Failure::operational(format!("cannot write the answer as YAML: {e}"))),
    }
}

/// The format a command line asks for, read from the raw arguments: for
/// reporting a command line clap refused in the format it asked for.
pub fn sniff<S: AsRef<str>>(args: &[S]) -> Format {
    let mut format = Format::Text;
    let mut args = args.iter().map(AsRef::as_ref);
    while let Some(arg) = args.next() {
        let value = match arg {
            "--json" => Some("json"),
            "-o" | "--output" => args.next(),
            _ => arg
                .strip_prefix("--output=")
                .or_else(|| arg.strip_prefix("-o=")),
        }
        .or_else(|| arg.strip_prefix("-o").filter(|v| !v.is_empty()));
        match value {
            Some("json") => format = Format::Json,
            Some("yaml") => format = Format::Yaml,
            _ => {}
        }
    }
    format
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_read_from_any_spelling() {
        assert_eq!(sniff(&["plan", "--json"]), Format::Json);
        assert_eq!(sniff(&["plan", "-o", "yaml"]), Format::Yaml);
        assert_eq!(sniff(&["plan", "-ojson"]), Format::Json);
        assert_eq!(sniff(&["plan", "--output=yaml"]), Format::Yaml);
        assert_eq!(sniff(&["plan", "--cores", "x"]), Format::Text);
    }

    #[test]
    fn yaml_renders_the_same_value() {
        let value = serde_json::json!({"a": [1, 2], "b": "x"});
        let yaml = render(&value, Format::Yaml).unwrap_or_default();
        let back: Value = serde_norway::from_str(&yaml).unwrap_or_default();
        assert_eq!(back, value);
    }
}
