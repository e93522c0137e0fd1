//! The instance lifecycle as pure functions, kept apart from I/O so every case is tested.
//!
//! [`decide`] answers a user request: already done, apply (record new intent and send an
//! ensure), or refuse. [`on_report`] folds an agent's observation into the user-visible
//! state.
//!
//! ```text
//!            start                 ensure(running)         report running
//!  stopped ─────────► pending ─────────────────► starting ───────────────► running
//!     ▲                                                                     │ │ │
//!     │ report off (host released)            stop ◄──────────────────────┘ │ │
//!  stopping ◄──────────────────────────────────────────────────────────────┘ │
//!                                        halt: halting ─► halted (host kept) │
//!  terminate (any): shuttingdown ── report absent ──► terminated ◄───────────┘
//!
//!  capture (app/capture.rs): stopped ─► capturing ── data stored or capture failed ──► stopped
//! ```
//!
//! A capturing instance is stopped with its disk being read: it cannot start until the
//! capture ends; terminate still wins (the capture then fails).

use vdc_schema::{InstanceAction, InstanceGoal, InstanceState, ObservedInstance};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do: the instance already is (or is becoming) what was asked.
    AlreadyDone(&'static str),
    Apply(Plan),
    /// The request makes no sense in this state (409).
    Refuse(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub state: InstanceState,
    pub goal: InstanceGoal,
    /// Needs a host to be chosen first (the instance holds none).
    pub schedule: bool,
    pub reboot: bool,
}

const fn plan(state: InstanceState, goal: InstanceGoal) -> Decision {
    Decision::Apply(Plan { state, goal, schedule: false, reboot: false })
}

/// What to do with `action` on an instance in `state`.
pub fn decide(action: InstanceAction, state: InstanceState) -> Decision {
    use InstanceAction as A;
    use InstanceState as S;
    let refuse = |why: &str| Decision::Refuse(format!("cannot {action} an instance that is {state}{why}"));
    match (action, state) {
        (A::Terminate, S::Terminated) => Decision::AlreadyDone("already terminated"),
        (A::Terminate, _) => plan(S::ShuttingDown, InstanceGoal::Terminated),

        (_, S::ShuttingDown | S::Terminated) => refuse(""),

        (A::Stop, S::Stopped | S::Capturing) => Decision::AlreadyDone("already stopped"),
        (A::Start | A::Poweron, S::Capturing) => refuse("; wait until the capture has ended"),
        (A::Halt, S::Capturing) => refuse("; a stopped instance holds no host to halt on"),
        (A::Reboot, S::Capturing) => refuse("; only a running instance can reboot"),
        (A::Stop, S::Stopping) => Decision::AlreadyDone("already stopping"),
        (A::Stop, S::Scheduling | S::Pending | S::Starting | S::Running | S::Halting | S::Halted | S::Failed) => {
            plan(S::Stopping, InstanceGoal::Stopped)
        }

        (A::Start | A::Poweron, S::Running) => Decision::AlreadyDone("already running"),
        (A::Start | A::Poweron, S::Starting | S::Pending | S::Scheduling) => Decision::AlreadyDone("already starting"),
        (A::Start | A::Poweron, S::Stopped) => {
            Decision::Apply(Plan { state: S::Pending, goal: InstanceGoal::Running, schedule: true, reboot: false })
        }
        (A::Start | A::Poweron, S::Halted | S::Failed) => plan(S::Starting, InstanceGoal::Running),
        (A::Start | A::Poweron, S::Stopping | S::Halting) => refuse("; wait until it has stopped"),

        (A::Halt, S::Halted) => Decision::AlreadyDone("already halted"),
        (A::Halt, S::Halting) => Decision::AlreadyDone("already halting"),
        (A::Halt, S::Scheduling | S::Pending | S::Starting | S::Running | S::Failed) => {
            plan(S::Halting, InstanceGoal::Halted)
        }
        (A::Halt, S::Stopped | S::Stopping) => refuse("; a stopped instance holds no host to halt on"),

        (A::Reboot, S::Running) => {
            Decision::Apply(Plan { state: S::Running, goal: InstanceGoal::Running, schedule: false, reboot: true })
        }
        (
            A::Reboot,
            S::Scheduling | S::Pending | S::Starting | S::Stopping | S::Stopped | S::Halting | S::Halted | S::Failed,
        ) => refuse("; only a running instance can reboot"),
    }
}

/// What a report means for the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub state: InstanceState,
    pub goal: InstanceGoal,
    /// Give the host's reservation back (stopped or terminated).
    pub release_host: bool,
}

/// Folds an observation (made after the agent saw the current intent) into the state.
pub fn on_report(goal: InstanceGoal, observed: ObservedInstance) -> Outcome {
    use InstanceGoal as G;
    use InstanceState as S;
    use ObservedInstance as O;
    let keep = |state| Outcome { state, goal, release_host: false };
    match (goal, observed) {
        (G::Terminated, O::Absent) => Outcome { state: S::Terminated, goal, release_host: true },
        (G::Terminated, _) => keep(S::ShuttingDown),

        (_, O::Failed) => keep(S::Failed),

        (G::Running, O::Starting) => keep(S::Starting),
        (G::Running, O::Running) => keep(S::Running),
        // The guest powered itself off: like OpenStack, it stays off (halted, host kept).
        (G::Running, O::Off) => Outcome { state: S::Halted, goal: G::Halted, release_host: false },
        (G::Running, O::Stopping) => keep(S::Halting),
        // The host lost it (e.g. rebooted): back to pending; the reconciler re-sends.
        (G::Running, O::Absent) => keep(S::Pending),

        (G::Halted, O::Off) => keep(S::Halted),
        (G::Halted, O::Starting | O::Running | O::Stopping | O::Absent) => keep(S::Halting),

        (G::Stopped, O::Off | O::Absent) => Outcome { state: S::Stopped, goal, release_host: true },
        (G::Stopped, O::Starting | O::Running | O::Stopping) => keep(S::Stopping),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceAction as A;
    use InstanceState as S;

    #[test]
    fn repeated_requests_are_success_not_errors() {
        assert_eq!(decide(A::Stop, S::Stopped), Decision::AlreadyDone("already stopped"));
        assert_eq!(decide(A::Terminate, S::Terminated), Decision::AlreadyDone("already terminated"));
        assert_eq!(decide(A::Start, S::Running), Decision::AlreadyDone("already running"));
        assert_eq!(decide(A::Halt, S::Halted), Decision::AlreadyDone("already halted"));
    }

    #[test]
    fn invalid_transitions_are_refused() {
        assert!(matches!(decide(A::Reboot, S::Stopped), Decision::Refuse(_)));
        assert!(matches!(decide(A::Start, S::Terminated), Decision::Refuse(_)));
        assert!(matches!(decide(A::Halt, S::Stopped), Decision::Refuse(_)));
        let Decision::Refuse(m) = decide(A::Stop, S::ShuttingDown) else { panic!() };
        assert_eq!(m, "cannot stop an instance that is shuttingdown");
    }

    #[test]
    fn every_pair_has_an_answer() {
        for a in InstanceAction::ALL {
            for s in InstanceState::ALL {
                let _ = decide(*a, *s);
            }
        }
        for g in InstanceGoal::ALL {
            for o in ObservedInstance::ALL {
                let out = on_report(*g, *o);
                assert!(!out.release_host || matches!(out.state, S::Stopped | S::Terminated));
            }
        }
    }

    #[test]
    fn a_capturing_instance_cannot_start_but_can_terminate() {
        assert!(matches!(decide(A::Start, S::Capturing), Decision::Refuse(_)));
        assert!(matches!(decide(A::Poweron, S::Capturing), Decision::Refuse(_)));
        assert_eq!(decide(A::Stop, S::Capturing), Decision::AlreadyDone("already stopped"));
        assert!(matches!(decide(A::Terminate, S::Capturing), Decision::Apply(p) if p.goal == InstanceGoal::Terminated));
    }

    #[test]
    fn start_of_a_stopped_instance_schedules() {
        let Decision::Apply(p) = decide(A::Start, S::Stopped) else { panic!() };
        assert!(p.schedule);
        assert_eq!(p.goal, InstanceGoal::Running);
    }

    #[test]
    fn reports_map_to_states() {
        use InstanceGoal as G;
        use ObservedInstance as O;
        assert_eq!(on_report(G::Running, O::Running).state, S::Running);
        assert_eq!(on_report(G::Stopped, O::Off), Outcome { state: S::Stopped, goal: G::Stopped, release_host: true });
        assert_eq!(on_report(G::Running, O::Off).goal, G::Halted);
        assert_eq!(on_report(G::Terminated, O::Running).state, S::ShuttingDown);
        assert_eq!(on_report(G::Running, O::Absent).state, S::Pending);
    }
}
