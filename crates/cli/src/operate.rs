//! `concord operator`: the operator actions of SPEC §8 from the command
//! line (retry now, a heuristic decision of one branch) and the audit
//! trail. The coordinator checks and records everything; this only asks.

use crate::{print_json, query};
use clap::{Args, Subcommand};
use concord_api::http::AuditEntryBody;
use concord_api::OperatorRequest;
use concord_client::Client;
use concord_proto::{AuditAction, Decision, Xid};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// The coordinator's address (its --listen).
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        default_value = "127.0.0.1:7100"
    )]
    coordinator: String,
    #[command(subcommand)]
    action: OperatorAction,
}

#[derive(Subcommand, Debug)]
enum OperatorAction {
    /// Send the decision again now to every branch that has not
    /// acknowledged it, instead of at its next retry.
    Retry(ActionArgs),
    /// Decide one participant's in-doubt branch by hand. Only where the
    /// protocol cannot finish it (its coordinator has not decided it here,
    /// and the branch has waited past the time its decision should take):
    /// if the real decision differs, the transaction's branches disagree
    /// and the data must be mended by hand.
    Heuristic(HeuristicArgs),
    /// A participant's branches in doubt, asked through the coordinator:
    /// those of any coordinator, including one that is gone (what a
    /// heuristic decision is for), with why each waits.
    InDoubt {
        /// The participant (as the coordinator's --participant names it).
        #[arg(long, value_name = "NAME")]
        participant: String,
        /// Print the HTTP API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// The coordinator's audit trail: every operator action, who, when,
    /// why and what it did.
    Audit {
        /// Print the HTTP API's JSON (GET /v1/audit).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct ActionArgs {
    /// The transaction.
    #[arg(value_name = "XID", value_parser = crate::parse_xid)]
    xid: Xid,
    /// The xid typed out again, in full, as confirmation.
    #[arg(long, value_name = "XID")]
    confirm: String,
    /// Who you are (kept in the audit trail).
    #[arg(long, value_name = "NAME")]
    operator: String,
    /// Why (kept in the audit trail).
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// The file holding the coordinator's operator token (its
    /// --operator-token-file).
    #[arg(long, value_name = "PATH")]
    operator_token_file: PathBuf,
}

#[derive(Args, Debug)]
struct HeuristicArgs {
    #[command(flatten)]
    action: ActionArgs,
    /// The participant whose branch to decide.
    #[arg(long, value_name = "NAME")]
    participant: String,
    /// commit or abort.
    #[arg(long, value_name = "DECISION", value_parser = parse_decision)]
    decision: Decision,
}

fn parse_decision(s: &str) -> Result<Decision, String> {
    match s {
        "commit" => Ok(Decision::Commit),
        "abort" => Ok(Decision::Abort),
        _ => Err(format!("{s:?}: commit or abort")),
    }
}

pub async fn operator(args: OperatorArgs) -> ExitCode {
    let who = format!("the coordinator at {}", args.coordinator);
    let (action, what) = match args.action {
        OperatorAction::Audit { json } => return audit(&args.coordinator, &who, json).await,
        OperatorAction::InDoubt { participant, json } => {
            return in_doubt(&args.coordinator, &who, &participant, json).await
        }
        OperatorAction::Retry(a) => (AuditAction::RetryNow, a),
        OperatorAction::Heuristic(h) => (
            AuditAction::Heuristic {
                participant: h.participant,
                decision: h.decision,
            },
            h.action,
        ),
    };
    let file = &what.operator_token_file;
    let token =
        match concord_server::http::HttpConfig::token_from_file(file, "--operator-token-file") {
            Ok(token) => token,
            Err(e) => {
                eprintln!("concord: error: {e:#}");
                return ExitCode::from(2);
            }
        };
    let request = OperatorRequest {
        xid: what.xid,
        action,
        confirm: what.confirm,
        operator: what.operator,
        reason: what.reason,
        token,
        at_unix_ms: 0,
    };
    let ask = async {
        Client::connect(&args.coordinator)
            .await?
            .operator(request)
            .await
    };
    let entry = match query(&who, ask).await {
        Ok(entry) => AuditEntryBody::of(&entry),
        Err(code) => return code,
    };
    let result = entry.result.as_deref().unwrap_or("no result");
    if entry.ok == Some(true) {
        println!("done (audit entry #{}): {result}", entry.seq);
        ExitCode::SUCCESS
    } else {
        eprintln!("concord: not done (audit entry #{}): {result}", entry.seq);
        ExitCode::from(1)
    }
}

async fn in_doubt(addr: &str, who: &str, participant: &str, json: bool) -> ExitCode {
    let ask = async { Client::connect(addr).await?.in_doubt_at(participant).await };
    let (participant, branches) = match query(who, ask).await {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let body = concord_api::http::InDoubtBody {
        participant,
        branches: branches
            .iter()
            .map(concord_api::http::InDoubtBranchBody::of)
            .collect(),
    };
    if json {
        return print_json(&body);
    }
    if body.branches.is_empty() {
        println!("{}: nothing in doubt", body.participant);
    }
    for b in body.branches {
        let held = b
            .held_ms
            .map(|ms| format!(", locks held {:.1} s", ms as f64 / 1000.0))
            .unwrap_or_default();
        println!(
            "{} at {} (coordinator {}{}{}): {}",
            b.xid,
            body.participant,
            b.coordinator,
            held,
            if b.overdue { ", overdue" } else { "" },
            b.why
        );
    }
    ExitCode::SUCCESS
}

async fn audit(addr: &str, who: &str, json: bool) -> ExitCode {
    let ask = async { Client::connect(addr).await?.audit().await };
    let (writable, entries) = match query(who, ask).await {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let entries: Vec<AuditEntryBody> = entries.iter().map(AuditEntryBody::of).collect();
    if json {
        return print_json(&concord_api::http::AuditBody { writable, entries });
    }
    if !writable {
        println!("(read-only: this coordinator has no --operator-token-file)");
    }
    if entries.is_empty() {
        println!("no operator actions");
    }
    for e in entries {
        let branch = e
            .participant
            .map(|p| format!(" on {p}"))
            .unwrap_or_default();
        let outcome = match e.ok {
            Some(true) => "done",
            Some(false) => "not done",
            None => "unfinished (the coordinator stopped during it)",
        };
        println!(
            "#{} {} {} {}{} of {}: {}{}\n    why: {}",
            e.seq,
            e.at,
            e.operator,
            e.action,
            branch,
            e.xid,
            outcome,
            e.result.map(|r| format!(": {r}")).unwrap_or_default(),
            e.reason
        );
    }
    ExitCode::SUCCESS
}
