//! `kubectl vdrive`: the binary as a kubectl plugin. Installed as
//! `kubectl-vdrive` on the PATH (a symlink to `vdrive`), kubectl runs it for
//! `kubectl vdrive …`; `vdrive kubectl …` is the same command set without the
//! symlink. Each command reads the ledger from the Nodes' annotations and
//! answers as a table, or with `-o json|yaml` as a document.

pub mod claims;
pub mod connect;
pub mod drives;
pub mod orphans;
pub mod pools;

use clap::{Args, Parser, Subcommand};

use self::connect::{Cluster, KubeArgs};
use super::outcome::{Answer, Failure};
use super::output::Format;
use super::table::{self, Row};
use crate::ledger::Quarantined;
use serde::Serialize;

/// The file name kubectl looks for on the PATH to run `kubectl vdrive`.
pub const PLUGIN_NAME: &str = "kubectl-vdrive";

/// Whether the binary was started by the plugin's name (argv[0]).
pub fn invoked_as_plugin(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .is_some_and(|name| name == PLUGIN_NAME)
}

#[derive(Debug, Clone, Args)]
pub struct KubectlArgs {
    #[command(subcommand)]
    pub command: PluginCommand,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Output format: a table, or the rows as a JSON or YAML document.
    #[arg(short = 'o', long = "output", value_enum, global = true, default_value_t = Format::Text)]
    pub output: Format,
}

/// `kubectl vdrive` as kubectl runs it.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl vdrive",
    bin_name = "kubectl vdrive",
    version,
    about = "vdrive's drives, claims, pools and orphans, read from the cluster",
    after_help = super::app::CONVENTIONS
)]
pub struct PluginCli {
    #[command(flatten)]
    pub args: KubectlArgs,
}

/// A plugin command: flags of its own, and an answer from the cluster.
pub trait PluginAnswer {
    fn answer(
        self,
        cluster: &Cluster,
    ) -> impl std::future::Future<Output = Result<Answer, Failure>> + Send;
}

/// The plugin's commands, each a type with an `answer` on a [`Cluster`]. A new
/// command is one line here: `Name(path::Args)`, where `Args` is clap `Args`
/// and implements [`PluginAnswer`].
macro_rules! plugin_commands {
    ($($(#[$doc:meta])* $name:ident($args:ty),)*) => {
        #[derive(Debug, Clone, Subcommand)]
        pub enum PluginCommand {
            $($(#[$doc])* $name($args),)*
        }

        impl PluginCommand {
            async fn answer(self, cluster: &Cluster) -> Result<Answer, Failure> {
                match self {
                    $(PluginCommand::$name(args) => PluginAnswer::answer(args, cluster).await,)*
                }
            }
        }
    };
}

plugin_commands! {
    /// Every node's signed drives: size, claimed, free, largest free extent, state.
    Drives(drives::DrivesTable),
    /// The claims (virtual drives), of every node or of NODE, with their PVCs.
    Claims(claims::ClaimsTable),
    /// The k8s and vm pools and the system reserve; exits 1 when not healthy.
    Pools(pools::PoolsTable),
    /// Claims no PersistentVolume accounts for, volumes whose claims are gone; exits 1 if any.
    Orphans(orphans::OrphansTable),
    /// Check the cluster's vdrive: each finding with the command that fixes it
    /// (-n: the namespace vdrive runs in, default vdrive); exits 1 on a failure.
    Doctor(crate::cli::doctor::DoctorChecks),
}

/// A table of rows read from the nodes' ledgers (and the same rows as the
/// JSON or YAML document). Nodes whose ledger cannot be read have no rows:
/// that is said on stderr, naming `what` they are missing.
fn ledger_table<R: Row + Serialize>(
    rows: &[R],
    quarantined: &[Quarantined],
    what: &str,
) -> Result<Answer, Failure> {
    let data = serde_json::to_value(rows).map_err(|e| e.to_string())?;
    let answer = Answer::yes(table::render(rows)).with_data(data);
    if quarantined.is_empty() {
        return Ok(answer);
    }
    let note = quarantined
        .iter()
        .map(|q| format!("warning: the ledger of {q} cannot be read; its {what} are not listed"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(answer.with_note(note))
}

/// Connects with kubectl's flags, then answers.
pub async fn run(args: KubectlArgs) -> Result<Answer, Failure> {
    let cluster = args.kube.connect().await?;
    args.command.answer(&cluster).await
}
