//! Where one transaction's record is when several coordinator instances
//! share a store (SPEC §1.8), and what the answers from there add up to.
//!
//! Each instance runs the logs it holds (its own, and any it adopted); a
//! caller may ask any instance about any xid (`GET
//! /v1/transactions/{xid}`). "No record" is not a harmless answer: under
//! presumed abort a READY HTTP participant takes a 404 to mean ABORT. So an
//! instance answers "no record" only when every log in the store was
//! asked, by whoever runs it now, and none has one. Whenever a log cannot
//! be asked (its lease ran out and nobody took it over yet, its holder is
//! unreachable, the last scan of the owner table is out of date) the
//! answer is "cannot tell yet", which the caller retries. xids are drawn at
//! random from 128 bits, so a record found in any log is the answer.
//!
//! The scan must also be younger than the question: a log created after
//! the scan (an instance that just started) may hold the xid, but not one
//! created after the question came (a log's row exists before any of its
//! transactions begins). So "no record" from an older scan is
//! [`Verdict::Rescan`]: wait for the next scan, and ask again.
//!
//! The tokio side (the server's HTTP routes) asks and forwards; this
//! module decides whom, and what the answers mean.

use concord_proto::mutant::{self, Mutant};

/// One log as the last scan of the owner table saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub log: String,
    /// The instance holding it, if any.
    pub holder: Option<String>,
    /// Where that holder serves its HTTP API, if it does.
    pub http: Option<String>,
    /// Its lease has not run out by the database's clock.
    pub live: bool,
}

/// Whom to ask about an xid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A log this process runs: its coordinator, directly.
    Here(String),
    /// A log another instance runs: that instance's HTTP API, asked to
    /// answer for this log only.
    There { log: String, http: String },
}

/// Whom to ask, and the logs nobody can be asked about now (why not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    pub ask: Vec<Ask>,
    pub cannot_ask: Vec<String>,
    /// The plan rests on a scan older than the question.
    pub scan_too_old: bool,
}

/// A question put to this instance.
#[derive(Clone, Copy, Debug)]
pub struct Question<'a> {
    /// The caller named the log (`?log=NAME`: a participant knows its
    /// coordinator's name from every call).
    pub log: Option<&'a str>,
    /// Another instance forwarded it: answer from the logs run here only,
    /// never forward again.
    pub forwarded: bool,
}

/// The last scan of the owner table.
#[derive(Clone, Copy, Debug)]
pub struct Scan<'a> {
    pub rows: &'a [Served],
    /// It was sent after the question came.
    pub after_question: bool,
}

/// Whom instance `me`, which runs the logs `here`, asks about an xid,
/// given its last `scan` (`None`: none yet).
pub fn plan(me: &str, here: &[String], scan: Option<Scan>, question: Question) -> Lookup {
    let wanted = |log: &str| match question.log {
        None => true,
        Some(named) => named == log,
    };
    let mut lookup = Lookup {
        ask: here
            .iter()
            .filter(|log| wanted(log))
            .map(|log| Ask::Here(log.clone()))
            .collect(),
        cannot_ask: Vec::new(),
        scan_too_old: false,
    };
    let named_here = question
        .log
        .is_some_and(|log| here.iter().any(|h| h == log));
    if question.forwarded {
        if let (Some(log), false) = (question.log, named_here) {
            lookup.cannot_ask.push(format!(
                "log {log} is not run by the instance asked (it moved)"
            ));
        }
        return lookup;
    }
    if named_here {
        return lookup;
    }
    let Some(scan) = scan else {
        lookup
            .cannot_ask
            .push("this instance has not read the store's owner table yet".into());
        return lookup;
    };
    lookup.scan_too_old = !scan.after_question;
    let rows = scan.rows;
    if let Some(log) = question.log {
        if !rows.iter().any(|row| row.log == log) {
            lookup.cannot_ask.push(format!(
                "no log {log} in the store's owner table as last read (a coordinator of that \
                 name has not started, or started only just now)"
            ));
        }
    }
    for row in rows {
        if here.contains(&row.log) || !wanted(&row.log) {
            continue;
        }
        let why = match (&row.holder, &row.http, row.live) {
            (Some(holder), _, true) if holder == me => {
                format!("log {} is moving within this instance", row.log)
            }
            (Some(_), Some(http), true) => {
                lookup.ask.push(Ask::There {
                    log: row.log.clone(),
                    http: http.clone(),
                });
                continue;
            }
            (Some(holder), None, true) => {
                format!(
                    "log {} is run by instance {holder}, which serves no HTTP API",
                    row.log
                )
            }
            (_, _, _) => format!(
                "log {} has no live lease: its instance stopped and another is taking it over",
                row.log
            ),
        };
        lookup.cannot_ask.push(why);
    }
    lookup
}

/// What one log's coordinator answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Record,
    NoRecord,
    /// No answer (unreachable, too slow, not running that log any more).
    Unknown(String),
}

/// What the answers add up to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The answer at this index holds the record.
    Found(usize),
    /// Every log was asked and none has a record: presumed abort holds.
    NoRecord,
    /// Some log could not be asked or did not answer: try again.
    CannotTell(String),
    /// None of the logs asked has a record, but the scan that named them
    /// is older than the question: scan again and ask again.
    Rescan,
}

/// Add up `answers` (one per [`Lookup::ask`], in order) with the logs
/// nobody could be asked about.
pub fn combine(lookup: &Lookup, answers: &[Answer]) -> Verdict {
    if let Some(found) = answers.iter().position(|a| *a == Answer::Record) {
        return Verdict::Found(found);
    }
    let mut unknown: Vec<&str> = lookup.cannot_ask.iter().map(String::as_str).collect();
    unknown.extend(answers.iter().filter_map(|a| match a {
        Answer::Unknown(why) => Some(why.as_str()),
        _ => None,
    }));
    if mutant::active(Mutant::LookupIgnoresUnknown) {
        unknown.clear();
    }
    if unknown.is_empty() {
        if lookup.scan_too_old && !mutant::active(Mutant::LookupTrustsStaleScan) {
            Verdict::Rescan
        } else {
            Verdict::NoRecord
        }
    } else {
        Verdict::CannotTell(unknown.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(log: &str, holder: Option<&str>, live: bool) -> Served {
        Served {
            log: log.into(),
            holder: holder.map(Into::into),
            http: holder.map(|h| format!("{h}:80")),
            live,
        }
    }

    const ANY: Question = Question {
        log: None,
        forwarded: false,
    };

    fn fresh(rows: &[Served]) -> Option<Scan<'_>> {
        Some(Scan {
            rows,
            after_question: true,
        })
    }

    fn here(logs: &[&str]) -> Vec<String> {
        logs.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn asks_its_own_logs_directly_and_the_others_at_their_holders() {
        let rows = [
            row("a", Some("a"), true),
            row("b", Some("c"), true),
            row("c", Some("c"), true),
        ];
        let lookup = plan("a", &here(&["a"]), fresh(&rows), ANY);
        assert_eq!(
            lookup.ask,
            vec![
                Ask::Here("a".into()),
                Ask::There {
                    log: "b".into(),
                    http: "c:80".into()
                },
                Ask::There {
                    log: "c".into(),
                    http: "c:80".into()
                },
            ]
        );
        assert!(lookup.cannot_ask.is_empty());
        let none = [Answer::NoRecord, Answer::NoRecord, Answer::NoRecord];
        assert_eq!(combine(&lookup, &none), Verdict::NoRecord);
        let found = [
            Answer::NoRecord,
            Answer::Unknown("slow".into()),
            Answer::Record,
        ];
        assert_eq!(combine(&lookup, &found), Verdict::Found(2));
    }

    /// The rule that keeps a 404 honest: a log nobody can answer for (its
    /// instance died and the takeover has not happened yet) or an answer
    /// that did not come makes it "cannot tell", never "no record".
    #[test]
    fn no_record_only_when_every_log_said_so() {
        let rows = [row("a", Some("a"), true), row("b", Some("b"), false)];
        let lookup = plan("a", &here(&["a"]), fresh(&rows), ANY);
        assert_eq!(lookup.ask, vec![Ask::Here("a".into())]);
        let Verdict::CannotTell(why) = combine(&lookup, &[Answer::NoRecord]) else {
            panic!("log b was not asked");
        };
        assert!(why.contains("log b has no live lease"), "{why}");

        let rows = [row("a", Some("a"), true), row("b", Some("b"), true)];
        let lookup = plan("a", &here(&["a"]), fresh(&rows), ANY);
        let answers = [
            Answer::NoRecord,
            Answer::Unknown("b: connection refused".into()),
        ];
        assert_eq!(
            combine(&lookup, &answers),
            Verdict::CannotTell("b: connection refused".into())
        );
        // Before the first scan it cannot know the other logs.
        let lookup = plan("a", &here(&["a"]), None, ANY);
        assert!(matches!(
            combine(&lookup, &[Answer::NoRecord]),
            Verdict::CannotTell(_)
        ));
    }

    #[test]
    fn a_named_log_is_asked_alone_and_a_forwarded_question_is_answered_here_only() {
        let rows = [row("a", Some("a"), true), row("b", Some("c"), true)];
        let named = |log| Question {
            log: Some(log),
            forwarded: false,
        };
        let lookup = plan("a", &here(&["a", "x"]), fresh(&rows), named("a"));
        assert_eq!(lookup.ask, vec![Ask::Here("a".into())]);
        let lookup = plan("a", &here(&["a"]), fresh(&rows), named("b"));
        assert_eq!(
            lookup.ask,
            vec![Ask::There {
                log: "b".into(),
                http: "c:80".into()
            }]
        );
        let lookup = plan("a", &here(&["a"]), fresh(&rows), named("zz"));
        assert!(lookup.ask.is_empty());
        assert!(matches!(combine(&lookup, &[]), Verdict::CannotTell(_)));

        let forwarded = |log| Question {
            log: Some(log),
            forwarded: true,
        };
        let lookup = plan("c", &here(&["b", "c"]), fresh(&rows), forwarded("b"));
        assert_eq!(lookup.ask, vec![Ask::Here("b".into())]);
        assert_eq!(combine(&lookup, &[Answer::NoRecord]), Verdict::NoRecord);
        // It moved on since the asker's scan: not "no record".
        let lookup = plan("a", &here(&["a"]), fresh(&rows), forwarded("b"));
        assert!(lookup.ask.is_empty());
        assert!(matches!(combine(&lookup, &[]), Verdict::CannotTell(why) if why.contains("moved")));
    }

    #[test]
    fn a_log_that_the_scan_says_is_ours_but_is_not_run_here_is_moving() {
        // Handed back or stopped since the scan.
        let rows = [row("a", Some("a"), true), row("b", Some("a"), true)];
        let lookup = plan("a", &here(&["a"]), fresh(&rows), ANY);
        assert_eq!(lookup.ask, vec![Ask::Here("a".into())]);
        assert!(lookup.cannot_ask[0].contains("moving"), "{lookup:?}");
    }

    /// An instance that started after the last scan may have begun the
    /// xid: "no record" waits for a scan younger than the question.
    #[test]
    fn no_record_from_a_scan_older_than_the_question_is_asked_again() {
        let rows = [row("a", Some("a"), true)];
        let old = Scan {
            rows: &rows,
            after_question: false,
        };
        let lookup = plan("a", &here(&["a"]), Some(old), ANY);
        assert_eq!(combine(&lookup, &[Answer::NoRecord]), Verdict::Rescan);
        assert_eq!(combine(&lookup, &[Answer::Record]), Verdict::Found(0));
        let lookup = plan("a", &here(&["a"]), fresh(&rows), ANY);
        assert_eq!(combine(&lookup, &[Answer::NoRecord]), Verdict::NoRecord);
        // A question for a log run here needs no scan at all.
        let named = Question {
            log: Some("a"),
            forwarded: false,
        };
        let lookup = plan("a", &here(&["a"]), Some(old), named);
        assert_eq!(combine(&lookup, &[Answer::NoRecord]), Verdict::NoRecord);
    }
}
