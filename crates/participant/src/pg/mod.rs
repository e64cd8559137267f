//! The PostgreSQL resource: branches are PostgreSQL's own prepared
//! transactions (`PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK
//! PREPARED`), named by concord gids ([`gid`]), with work as JSON
//! ([`work`]), and reconciled against `pg_prepared_xacts` so that no
//! prepared transaction of concord's is ever left holding locks
//! ([`reconcile`]). Sans-IO: [`resource::PgResource`] returns commands; a
//! driver (`concord pg-participant`) runs them.

pub mod gid;
pub mod reconcile;
pub mod resource;
pub mod work;

pub use gid::Gid;
pub use reconcile::{PreparedList, PreparedReport, PreparedRow};
pub use resource::{
    PgCommand, PgCommandKind, PgNotice, PgReply, PgResource, PrepareReply, Resolution,
};
pub use work::{PgStatement, PgWork};
