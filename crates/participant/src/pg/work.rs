//! A PostgreSQL branch's work, as the application gives it (JSON, the
//! `work` of a branch in the HTTP API and the SDK):
//!
//! ```json
//! {"gids": ["cc1:…"],
//!  "statements": [{"sql": "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
//!                  "params": [10, "alice"], "expect_rows": 1}]}
//! ```
//!
//! - `gids`: application branches. The application ran its own SQL on its
//!   own connection and `PREPARE TRANSACTION`ed it under each gid; the
//!   participant checks they are prepared and resolves them.
//! - `statements`: shipped SQL. The participant runs them, in order, in one
//!   transaction of its own and prepares it. `expect_rows` votes ABORT
//!   unless the statement touched exactly that many rows.
//!
//! Several branches for one participant merge into one work (gids and
//! statements in order).

use crate::pg::gid::Gid;
use concord_proto::{NodeId, Xid};
use serde::{Deserialize, Serialize};

/// Most statements one branch may ship.
pub const STATEMENTS_MAX: usize = 256;
/// Most application gids one branch may name.
pub const GIDS_MAX: usize = 64;
/// Longest statement text.
pub const SQL_BYTES_MAX: usize = 16 * 1024;
/// Most parameters of one statement.
pub const PARAMS_MAX: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgWork {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statements: Vec<PgStatement>,
}

/// One parameterized statement: `$1`, `$2` … take `params` in order.
/// Parameters are JSON null, booleans, numbers or strings, converted to
/// the type PostgreSQL infers for each placeholder (cast in SQL, e.g.
/// `$1::numeric`, where it cannot infer one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgStatement {
    pub sql: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<serde_json::Value>,
    /// Vote ABORT unless the statement touched exactly this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_rows: Option<u64>,
}

impl PgStatement {
    pub fn new(sql: impl Into<String>, params: Vec<serde_json::Value>) -> PgStatement {
        PgStatement {
            sql: sql.into(),
            params,
            expect_rows: None,
        }
    }

    /// Vote ABORT unless exactly `rows` rows are touched.
    pub fn expect_rows(mut self, rows: u64) -> PgStatement {
        self.expect_rows = Some(rows);
        self
    }
}

impl PgWork {
    /// The work's bytes, as a branch carries them.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decode and check the limits.
    pub fn decode(bytes: &[u8]) -> Result<PgWork, String> {
        let work: PgWork = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "not PostgreSQL work ({e}); expected JSON like {{\"gids\": [...]}} or \
                 {{\"statements\": [{{\"sql\": ..., \"params\": [...]}}]}}"
            )
        })?;
        if work.statements.len() > STATEMENTS_MAX {
            return Err(format!(
                "{} statements, above the limit of {STATEMENTS_MAX}",
                work.statements.len()
            ));
        }
        if work.gids.len() > GIDS_MAX {
            return Err(format!(
                "{} gids, above the limit of {GIDS_MAX}",
                work.gids.len()
            ));
        }
        for (i, s) in work.statements.iter().enumerate() {
            if s.sql.trim().is_empty() || s.sql.len() > SQL_BYTES_MAX {
                return Err(format!(
                    "statement {} must be 1 to {SQL_BYTES_MAX} bytes of SQL",
                    i + 1
                ));
            }
            if s.params.len() > PARAMS_MAX {
                return Err(format!(
                    "statement {} has {} parameters, above the limit of {PARAMS_MAX}",
                    i + 1,
                    s.params.len()
                ));
            }
            if let Some(bad) = s.params.iter().find(|p| p.is_array() || p.is_object()) {
                return Err(format!(
                    "statement {}: parameter {bad} is not null, a boolean, a number or a string",
                    i + 1
                ));
            }
        }
        Ok(work)
    }

    /// Whether the bytes look like PostgreSQL work (for merging).
    pub fn is_pg_work(bytes: &[u8]) -> bool {
        PgWork::decode(bytes).is_ok()
    }

    /// Several works as one, in order.
    pub fn merge(works: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        let mut merged = PgWork::default();
        for work in works {
            let work = PgWork::decode(work)?;
            merged.gids.extend(work.gids);
            merged.statements.extend(work.statements);
        }
        PgWork::decode(&merged.encode())?;
        Ok(merged.encode())
    }

    /// The gids a branch resolves, checked: the application's (each must
    /// be a concord gid for this participant, this xid and the
    /// coordinator that sent the PREPARE), then the shipped statements'
    /// own gid.
    pub fn branch_gids(
        &self,
        participant: &str,
        coordinator: &NodeId,
        xid: Xid,
    ) -> Result<BranchGids, String> {
        let mut application = Vec::with_capacity(self.gids.len());
        for text in &self.gids {
            let gid = Gid::parse(text).ok_or_else(|| {
                format!(
                    "{text:?} is not a concord gid (cc1:coordinator:participant:xid:branch:hold_s)"
                )
            })?;
            if gid.participant != participant {
                return Err(format!(
                    "gid {text} is for participant {}, and this is {participant}",
                    gid.participant
                ));
            }
            if gid.xid != xid {
                return Err(format!("gid {text} belongs to xid {}, not {xid}", gid.xid));
            }
            if gid.coordinator != *coordinator {
                return Err(format!(
                    "gid {text} names coordinator {}, but the PREPARE came from {coordinator}",
                    gid.coordinator
                ));
            }
            if gid.branch == crate::pg::gid::SHIPPED_BRANCH {
                return Err(format!(
                    "gid {text} uses the branch label {}, which is the participant's own",
                    gid.branch
                ));
            }
            if !application.contains(text) {
                application.push(text.clone());
            }
        }
        let shipped = if self.statements.is_empty() {
            None
        } else {
            Some(Gid::shipped(coordinator, participant, xid)?.to_string())
        };
        Ok(BranchGids {
            application,
            shipped,
        })
    }
}

/// What one branch prepares and later resolves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BranchGids {
    /// Prepared by the application: checked in phase 1.
    pub application: Vec<String>,
    /// Prepared by the participant from the shipped statements.
    pub shipped: Option<String>,
}

impl BranchGids {
    /// Every gid phase 2 resolves.
    pub fn all(&self) -> Vec<String> {
        self.shipped
            .iter()
            .chain(self.application.iter())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn works_merge_in_order_and_bad_work_is_refused() {
        let a = PgWork {
            gids: vec!["g1".into()],
            statements: vec![PgStatement::new("select 1", vec![json!(1)]).expect_rows(1)],
        };
        let b = PgWork {
            gids: vec!["g2".into()],
            statements: vec![],
        };
        let merged = PgWork::decode(&PgWork::merge(&[a.encode(), b.encode()]).unwrap()).unwrap();
        assert_eq!(merged.gids, vec!["g1", "g2"]);
        assert_eq!(merged.statements.len(), 1);
        for bad in [
            &b"not json"[..],
            br#"{"statement": []}"#,
            br#"{"statements": [{"sql": " "}]}"#,
            br#"{"statements": [{"sql": "select $1", "params": [[1]]}]}"#,
        ] {
            assert!(
                PgWork::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn application_gids_must_be_this_branchs() {
        let xid = Xid(7);
        let coordinator: NodeId = "coord".into();
        let good = Gid::new("coord", "pg1", xid, "app", 30)
            .unwrap()
            .to_string();
        let work = PgWork {
            gids: vec![good.clone(), good.clone()],
            statements: vec![PgStatement::new("select 1", vec![])],
        };
        let gids = work.branch_gids("pg1", &coordinator, xid).unwrap();
        assert_eq!(gids.application, vec![good.clone()]);
        let shipped = gids.shipped.clone().unwrap();
        assert_eq!(Gid::parse(&shipped).unwrap().hold_s, 0);
        assert_eq!(gids.all(), vec![shipped, good]);
        let cases = [
            (
                Gid::new("coord", "pg2", xid, "app", 30).unwrap(),
                "participant",
            ),
            (
                Gid::new("coord", "pg1", Xid(8), "app", 30).unwrap(),
                "belongs to",
            ),
            (
                Gid::new("other", "pg1", xid, "app", 30).unwrap(),
                "names coordinator",
            ),
            (Gid::new("coord", "pg1", xid, "sql", 30).unwrap(), "own"),
        ];
        for (gid, why) in cases {
            let work = PgWork {
                gids: vec![gid.to_string()],
                statements: vec![],
            };
            let err = work.branch_gids("pg1", &coordinator, xid).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let foreign = PgWork {
            gids: vec!["pgbench-1".into()],
            statements: vec![],
        };
        assert!(foreign.branch_gids("pg1", &coordinator, xid).is_err());
    }
}
