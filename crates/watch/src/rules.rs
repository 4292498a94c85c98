//! What the daemon remembers per target between evaluations, as plain state: the
//! actions of the last minute (rate limits), the sessions it cancelled under a
//! `cancel-then-terminate` rule (by `(pid, backend_start)`, to escalate), and the
//! decisions it already wrote down that would otherwise repeat every interval (a
//! protected superuser, a dry run, a rate-limited session). No I/O: the clock is passed
//! in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgkill_core::planner::Signal;

use crate::policy::{Action, Policy, Rule};

/// A session's identity: pids are reused, `(pid, backend_start)` is not.
pub type Key = (i32, Option<DateTime<Utc>>);

/// How far back the per-minute limits look.
const MINUTE: Duration = Duration::from_secs(60);

/// Actions within the last minute.
#[derive(Debug, Clone, Default)]
struct Window {
    times: VecDeque<Instant>,
}

impl Window {
    fn count(&mut self, now: Instant) -> usize {
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.times.pop_front();
        }
        self.times.len()
    }

    fn record(&mut self, now: Instant) {
        self.times.push_back(now);
    }
}

/// What to do with one session a rule matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Signal it now; `escalation`: a terminate because a cancel did not help.
    Act {
        /// Cancel or terminate.
        signal: Signal,
        /// Whether this terminate follows a cancel of the same rule.
        escalation: bool,
    },
    /// Cancelled already by this rule: terminate only once `escalate_after` has passed.
    Wait,
    /// Over a limit (which one, for people): skipped this time.
    RateLimited(String),
}

/// What one target's evaluations remember.
#[derive(Debug, Clone, Default)]
pub struct TargetState {
    all: Window,
    per_rule: HashMap<String, Window>,
    cancelled: HashMap<Key, (String, Instant)>,
    noted: HashSet<(Key, String, &'static str)>,
}

impl TargetState {
    /// Decides what `rule` does to the session `key` now, and counts it against the rate
    /// limits when it acts.
    pub fn decide(&mut self, policy: &Policy, rule: &Rule, key: Key, now: Instant) -> Decision {
        let (signal, escalation) = match rule.action {
            Action::Cancel => (Signal::Cancel, false),
            Action::Terminate => (Signal::Terminate, false),
            Action::CancelThenTerminate => match self.cancelled.get(&key) {
                Some((name, at)) if *name == rule.name => {
                    let after = rule.escalate_after.unwrap_or_default();
                    if now.saturating_duration_since(*at) < after {
                        return Decision::Wait;
                    }
                    (Signal::Terminate, true)
                }
                _ => (Signal::Cancel, false),
            },
        };
        let window = self.per_rule.entry(rule.name.clone()).or_default();
        if let Some(limit) = rule.max_per_minute {
            if window.count(now) >= limit as usize {
                return Decision::RateLimited(format!(
                    "rule {:?} reached its max_per_minute = {limit}",
                    rule.name
                ));
            }
        }
        if let Some(limit) = policy.max_actions_per_minute {
            if self.all.count(now) >= limit as usize {
                return Decision::RateLimited(format!(
                    "the target reached [limits] max_actions_per_minute = {limit}"
                ));
            }
        }
        window.record(now);
        self.all.record(now);
        Decision::Act { signal, escalation }
    }

    /// Records that `rule` signalled `key` (or, in a dry run, would have): a cancel of a
    /// `cancel-then-terminate` rule starts the escalation clock; a terminate ends it.
    pub fn signalled(&mut self, rule: &Rule, key: Key, signal: Signal, now: Instant) {
        match (rule.action, signal) {
            (Action::CancelThenTerminate, Signal::Cancel) => {
                self.cancelled.insert(key, (rule.name.clone(), now));
            }
            (_, Signal::Terminate) => {
                self.cancelled.remove(&key);
            }
            _ => {}
        }
    }

    /// True the first time a decision of `kind` is seen for `key` under `rule`: the
    /// decisions that would repeat every interval are written down once.
    pub fn first_note(&mut self, key: Key, rule: &str, kind: &'static str) -> bool {
        self.noted.insert((key, rule.to_owned(), kind))
    }

    /// Whether a decision of `kind` for `key` under `rule` was written down already.
    pub fn noted(&self, key: Key, rule: &str, kind: &'static str) -> bool {
        self.noted.contains(&(key, rule.to_owned(), kind))
    }

    /// Forgets sessions no rule matched in the last evaluation: they ended, or stopped
    /// matching (the cancel helped), so a later match starts afresh.
    pub fn retain(&mut self, seen: &HashSet<Key>) {
        self.cancelled.retain(|k, _| seen.contains(k));
        self.noted.retain(|(k, _, _)| seen.contains(k));
    }

    /// How many sessions wait for escalation.
    pub fn pending_escalations(&self) -> usize {
        self.cancelled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(text).unwrap()
    }

    fn key(pid: i32) -> Key {
        (pid, DateTime::from_timestamp(1_700_000_000, 0))
    }

    #[test]
    fn rule_limit_skips_then_frees_after_a_minute() {
        let p = policy(
            "[[rule]]\nname = \"r\"\naction = \"terminate\"\nmax_per_minute = 2\nmatch = { state = \"idle\" }\n",
        );
        let r = &p.rules[0];
        let mut s = TargetState::default();
        let t0 = Instant::now();
        let act = Decision::Act {
            signal: Signal::Terminate,
            escalation: false,
        };
        assert_eq!(s.decide(&p, r, key(1), t0), act);
        assert_eq!(s.decide(&p, r, key(2), t0), act);
        assert!(
            matches!(s.decide(&p, r, key(3), t0), Decision::RateLimited(w) if w.contains("max_per_minute = 2"))
        );
        assert_eq!(s.decide(&p, r, key(3), t0 + MINUTE), act);
    }

    #[test]
    fn target_limit_spans_rules() {
        let p = policy(
            "[limits]\nmax_actions_per_minute = 1\n[[rule]]\nname = \"a\"\naction = \"cancel\"\nmatch = { state = \"active\" }\n[[rule]]\nname = \"b\"\naction = \"terminate\"\nmatch = { state = \"idle\" }\n",
        );
        let mut s = TargetState::default();
        let t0 = Instant::now();
        assert!(matches!(
            s.decide(&p, &p.rules[0], key(1), t0),
            Decision::Act {
                signal: Signal::Cancel,
                ..
            }
        ));
        assert!(
            matches!(s.decide(&p, &p.rules[1], key(2), t0), Decision::RateLimited(w) if w.contains("[limits]"))
        );
    }

    #[test]
    fn cancel_then_terminate_escalates_by_identity() {
        let p = policy(
            "[[rule]]\nname = \"r\"\naction = \"cancel-then-terminate\"\nescalate_after = \"10s\"\nmatch = { state = \"active\" }\n",
        );
        let r = &p.rules[0];
        let mut s = TargetState::default();
        let t0 = Instant::now();
        assert_eq!(
            s.decide(&p, r, key(1), t0),
            Decision::Act {
                signal: Signal::Cancel,
                escalation: false
            }
        );
        s.signalled(r, key(1), Signal::Cancel, t0);
        assert_eq!(
            s.decide(&p, r, key(1), t0 + Duration::from_secs(5)),
            Decision::Wait
        );
        // Another session with the same pid (reused) starts with a cancel.
        let reused = (1, DateTime::from_timestamp(1_700_000_999, 0));
        assert!(matches!(
            s.decide(&p, r, reused, t0 + Duration::from_secs(5)),
            Decision::Act {
                signal: Signal::Cancel,
                ..
            }
        ));
        assert_eq!(
            s.decide(&p, r, key(1), t0 + Duration::from_secs(10)),
            Decision::Act {
                signal: Signal::Terminate,
                escalation: true
            }
        );
        s.signalled(r, key(1), Signal::Terminate, t0);
        assert_eq!(s.pending_escalations(), 0);
    }

    #[test]
    fn sessions_that_stop_matching_are_forgotten() {
        let p = policy(
            "[[rule]]\nname = \"r\"\naction = \"cancel-then-terminate\"\nescalate_after = \"10s\"\nmatch = { state = \"active\" }\n",
        );
        let r = &p.rules[0];
        let mut s = TargetState::default();
        let t0 = Instant::now();
        s.signalled(r, key(1), Signal::Cancel, t0);
        assert!(s.first_note(key(1), "r", "refused"));
        assert!(!s.first_note(key(1), "r", "refused"));
        assert!(s.noted(key(1), "r", "refused"));
        s.retain(&HashSet::new());
        assert_eq!(s.pending_escalations(), 0);
        assert!(s.first_note(key(1), "r", "refused"));
    }
}
