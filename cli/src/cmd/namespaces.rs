//! `rctr namespaces create|ls|rm|label`.

use super::{labels_column, parse_labels, st, Reported};
use crate::client::{status_message, Client};
use crate::format::table;
use anyhow::Result;
use clap::Subcommand;
use rcd_proto::v1 as pb;

#[derive(Subcommand, Debug)]
// each subcommand's arguments are built only when it runs: the whole tree costs ~1 ms
#[command(defer = true)]
pub enum NamespacesCommand {
    /// Create a namespace, with labels KEY=VALUE
    Create { name: String, labels: Vec<String> },
    /// List namespaces
    #[command(alias = "ls")]
    List {
        /// Print only the names
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove empty namespaces
    #[command(alias = "rm", alias = "delete")]
    Remove {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set (KEY=VALUE) or remove (KEY=) labels
    Label {
        name: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

pub async fn run(client: &Client, cmd: NamespacesCommand) -> Result<()> {
    let st = st(client);
    match cmd {
        NamespacesCommand::Create { name, labels } => {
            let labels = parse_labels(&labels)?;
            client
                .namespaces()
                .create(pb::CreateNamespaceRequest { name, labels })
                .await
                .map_err(&st)?;
        }
        NamespacesCommand::List { quiet } => {
            let list = client
                .namespaces()
                .list(pb::ListNamespacesRequest {})
                .await
                .map_err(&st)?
                .into_inner()
                .namespaces;
            if quiet {
                for n in list {
                    println!("{}", n.name);
                }
                return Ok(());
            }
            let mut rows = vec![vec!["NAME".to_owned(), "LABELS".into()]];
            for n in list {
                rows.push(vec![n.name, labels_column(&n.labels)]);
            }
            print!("{}", table(&rows));
        }
        NamespacesCommand::Remove { names } => {
            let mut failed = false;
            for name in names {
                match client
                    .namespaces()
                    .delete(pb::DeleteNamespaceRequest { name: name.clone() })
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(s) => {
                        eprintln!("rctr: {}", status_message(client.address(), &s));
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(Reported.into());
            }
        }
        NamespacesCommand::Label { name, labels } => {
            let labels = parse_labels(&labels)?;
            let n = client
                .namespaces()
                .update(pb::UpdateNamespaceRequest { name, labels })
                .await
                .map_err(&st)?
                .into_inner()
                .namespace
                .unwrap_or_default();
            println!("{}", labels_column(&n.labels));
        }
    }
    Ok(())
}
