//! Listing transactions (`GET /v1/transactions`): which of the ones the
//! coordinator knows match a filter, newest first, in pages with a cursor.
//!
//! The cursor is the last listed transaction's sort key (`began µs`.`xid`
//! in hex): a page after it holds exactly the transactions that sort after
//! it, so pages neither repeat nor skip a transaction that was listed,
//! even while new ones begin (those sort first and appear on a new first
//! page).

use concord_api::{CoordinatorState, ListFilter, TxnSummary};
use concord_proto::Xid;

/// The most a page may hold.
pub const LIMIT_MAX: usize = 1000;
/// A page's size when none is asked for.
pub const LIMIT_DEFAULT: usize = 100;

/// A transaction to list, with its sort key.
pub struct Candidate {
    /// When it began (µs of the node's clock); 0 when unknown (recovered
    /// from the log), which sorts last.
    pub began_us: u64,
    pub summary: TxnSummary,
}

/// Whether `s` passes every condition of `filter`.
pub fn matches(filter: &ListFilter, s: &TxnSummary) -> bool {
    let in_doubt = matches!(
        s.state,
        CoordinatorState::Wait
            | CoordinatorState::Committing
            | CoordinatorState::CommittedWaitingForAcks
    );
    let participant_ok = match &filter.participant {
        None => true,
        Some(p) => s.participants.iter().any(|q| q == p),
    };
    let min_age_ok = match filter.min_age_ms {
        None => true,
        Some(min) => s.age_ms.unwrap_or(0) >= min,
    };
    let max_age_ok = match filter.max_age_ms {
        None => true,
        Some(max) => s.age_ms.is_some_and(|age| age <= max),
    };
    let xid_ok = match &filter.xid_prefix {
        None => true,
        Some(prefix) => concord_api::xid_has_prefix(s.xid, prefix),
    };
    xid_ok
        && (filter.states.is_empty() || filter.states.contains(&s.state))
        && (!filter.in_doubt || in_doubt)
        && (!filter.needs_attention || s.needs_attention)
        && participant_ok
        && min_age_ok
        && max_age_ok
}

/// One page: `candidates` sorted newest first, those after `cursor`, at
/// most `limit`; and the cursor of the next page, if there is more.
pub fn page(
    mut candidates: Vec<Candidate>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<TxnSummary>, Option<String>), String> {
    let after = cursor.map(parse_cursor).transpose()?;
    candidates.sort_by_key(|c| std::cmp::Reverse(key(c)));
    let limit = limit.clamp(1, LIMIT_MAX);
    // Newest first: "after the cursor" is a smaller key.
    let mut rest = candidates.into_iter().filter(|c| match after {
        None => true,
        Some(cursor) => key(c) < cursor,
    });
    let page: Vec<Candidate> = rest.by_ref().take(limit).collect();
    let more = rest.next().is_some();
    let next = match (more, page.last()) {
        (true, Some(last)) => Some(format!("{}.{:x}", last.began_us, last.summary.xid.0)),
        _ => None,
    };
    Ok((page.into_iter().map(|c| c.summary).collect(), next))
}

fn key(c: &Candidate) -> (u64, u128) {
    (c.began_us, c.summary.xid.0)
}

fn parse_cursor(text: &str) -> Result<(u64, u128), String> {
    let bad = || format!("cursor {text:?}: not a cursor this coordinator gave (use next_cursor)");
    let (us, xid) = text.split_once('.').ok_or_else(bad)?;
    let us: u64 = us.parse().map_err(|_| bad())?;
    let xid: Xid = xid.parse().map_err(|_| bad())?;
    Ok((us, xid.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(began_us: u64, xid: u128, state: CoordinatorState) -> Candidate {
        Candidate {
            began_us,
            summary: TxnSummary {
                xid: Xid(xid),
                state,
                age_ms: Some(1000 - began_us / 1000),
                participants: vec!["p0".into()],
                shape: None,
                needs_attention: false,
                reason: None,
            },
        }
    }

    #[test]
    fn pages_follow_the_cursor_without_repeats_or_gaps() {
        let all = || {
            (1..=5)
                .map(|i| c(i * 1000, i as u128, CoordinatorState::Committed))
                .collect()
        };
        let (first, next) = page(all(), None, 2).expect("page");
        assert_eq!(
            first.iter().map(|s| s.xid.0).collect::<Vec<_>>(),
            vec![5, 4]
        );
        let (second, next) = page(all(), next.as_deref(), 2).expect("page");
        assert_eq!(
            second.iter().map(|s| s.xid.0).collect::<Vec<_>>(),
            vec![3, 2]
        );
        let (third, next) = page(all(), next.as_deref(), 2).expect("page");
        assert_eq!(third.iter().map(|s| s.xid.0).collect::<Vec<_>>(), vec![1]);
        assert_eq!(next, None);
        assert!(page(all(), Some("nonsense"), 2).is_err());
    }

    #[test]
    fn filters_by_state_in_doubt_participant_and_age() {
        let wait = c(1000, 1, CoordinatorState::Wait).summary;
        let done = c(2000, 2, CoordinatorState::Committed).summary;
        let in_doubt = ListFilter {
            in_doubt: true,
            ..ListFilter::default()
        };
        assert!(matches(&in_doubt, &wait) && !matches(&in_doubt, &done));
        let committed = ListFilter {
            states: vec![CoordinatorState::Committed],
            ..ListFilter::default()
        };
        assert!(!matches(&committed, &wait) && matches(&committed, &done));
        let other = ListFilter {
            participant: Some("p9".into()),
            ..ListFilter::default()
        };
        assert!(!matches(&other, &wait));
        let old = ListFilter {
            min_age_ms: Some(999),
            ..ListFilter::default()
        };
        assert!(matches(&old, &wait) && !matches(&old, &done));
        let young = ListFilter {
            max_age_ms: Some(998),
            ..ListFilter::default()
        };
        assert!(!matches(&young, &wait) && matches(&young, &done));
    }
}
