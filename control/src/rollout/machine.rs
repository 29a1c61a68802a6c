//! The rollout lifecycle as a state machine without IO.
//!
//! ```text
//! awaiting_approval ──(k approvals)──▶ approved ──start──▶ running ──last wave passes──▶ completed
//!                                                      │   ▲
//!                               pause / gate fails ──▶ paused ──resume──┘
//!        any state before an end ──abort──▶ aborted     any admitted ──rollback──▶ rolled_back
//! ```
//!
//! Within `running`, the current wave is `pending` (to be admitted), `soaking` (admitted,
//! waiting for its soak time and then its gates) or `awaiting_advance` (passed, waiting for
//! an operator's advance when the plan says so). [`Progress::command`] applies an operator's
//! command and [`Progress::tick`] the driver's periodic step; both return a [`Transition`]
//! naming the next progress, the audit action and the effects the driver must carry out.

use serde::{Deserialize, Serialize};

use super::gates::Judgement;
use super::spec::{Advance, OnGateFail};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    AwaitingApproval,
    Approved,
    Running,
    Paused,
    Completed,
    Aborted,
    RolledBack,
}

impl RolloutState {
    pub const ALL: [RolloutState; 7] = [
        RolloutState::AwaitingApproval,
        RolloutState::Approved,
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Completed,
        RolloutState::Aborted,
        RolloutState::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::AwaitingApproval => "awaiting_approval",
            RolloutState::Approved => "approved",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
            RolloutState::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutState> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// No command moves a rollout out of an end state.
    pub fn is_final(self) -> bool {
        matches!(self, RolloutState::Completed | RolloutState::Aborted | RolloutState::RolledBack)
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the current wave is, while running (kept while paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WavePhase {
    Pending,
    Soaking,
    AwaitingAdvance,
}

impl WavePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            WavePhase::Pending => "pending",
            WavePhase::Soaking => "soaking",
            WavePhase::AwaitingAdvance => "awaiting_advance",
        }
    }

    pub fn parse(text: &str) -> Option<WavePhase> {
        [WavePhase::Pending, WavePhase::Soaking, WavePhase::AwaitingAdvance]
            .into_iter()
            .find(|phase| phase.as_str() == text)
    }
}

/// What an operator (or approver) asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// An approval was recorded; the rollout now has `valid` of the `required` approvals.
    Approved {
        valid: usize,
        required: usize,
    },
    /// Start; `valid` approvals of the `required` are on the plan.
    Start {
        valid: usize,
        required: usize,
    },
    Pause,
    Resume,
    Abort,
    Rollback,
    Advance,
}

impl Command {
    /// The audit action of the command.
    pub fn action(self) -> &'static str {
        match self {
            Command::Approved { .. } => "rollout.approve",
            Command::Start { .. } => "rollout.start",
            Command::Pause => "rollout.pause",
            Command::Resume => "rollout.resume",
            Command::Abort => "rollout.abort",
            Command::Rollback => "rollout.rollback",
            Command::Advance => "rollout.wave.advance",
        }
    }
}

/// Something the driver must do as part of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Admit the devices of this wave (signed plan + admission on their assign topics).
    AdmitWave(u32),
    /// Admit the holdout: the rollout is complete.
    ReleaseHoldout,
    /// Send every admitted device back to the fallback bundle.
    RevertAdmitted,
}

/// Where a rollout is: state, wave, the wave's phase and when it was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub state: RolloutState,
    pub wave: u32,
    pub phase: WavePhase,
    pub wave_started_ms: Option<i64>,
}

/// The rollout's fixed shape, from its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub waves: u32,
    /// Soak of each wave in milliseconds.
    pub soak_ms: Vec<i64>,
    pub advance: Advance,
    pub on_gate_fail: OnGateFail,
    pub has_fallback: bool,
}

/// A state change and what comes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub next: Progress,
    /// Audit action, e.g. `rollout.wave.admit`.
    pub action: &'static str,
    pub reason: String,
    pub effects: Vec<Effect>,
}

/// Why a command is refused (a conflict with the rollout's state).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Progress {
    /// A new rollout, waiting for approvals.
    pub fn new() -> Progress {
        Progress {
            state: RolloutState::AwaitingApproval,
            wave: 0,
            phase: WavePhase::Pending,
            wave_started_ms: None,
        }
    }

    fn to(self, state: RolloutState) -> Progress {
        Progress { state, ..self }
    }

    /// Applies an operator's command at `now_ms`.
    pub fn command(
        self,
        shape: &Shape,
        command: Command,
        now_ms: i64,
    ) -> Result<Transition, Refused> {
        use RolloutState as S;
        let state = self.state;
        let refuse = |what: &str| Err(Refused(format!("cannot {what} a rollout that is {state}")));
        let done = |next: Progress, reason: String, effects: Vec<Effect>| {
            Ok(Transition { next, action: command.action(), reason, effects })
        };
        match command {
            Command::Approved { valid, required } => match state {
                S::AwaitingApproval if valid >= required => done(
                    self.to(S::Approved),
                    format!("{valid} of {required} required approvals"),
                    vec![],
                ),
                S::AwaitingApproval | S::Approved => {
                    done(self, format!("{valid} of {required} required approvals"), vec![])
                }
                _ => refuse("approve"),
            },
            Command::Start { valid, required } => match state {
                S::Approved | S::AwaitingApproval if valid >= required => done(
                    Progress {
                        state: S::Running,
                        wave: 0,
                        phase: WavePhase::Pending,
                        wave_started_ms: None,
                    },
                    format!("started with {valid} of {required} required approvals"),
                    vec![],
                ),
                S::Approved | S::AwaitingApproval => Err(Refused(format!(
                    "the plan has {valid} valid approvals of the {required} required; the \
                     rollout cannot start"
                ))),
                _ => refuse("start"),
            },
            Command::Pause => match state {
                S::Running => done(self.to(S::Paused), "paused by an operator".into(), vec![]),
                _ => refuse("pause"),
            },
            Command::Resume => match state {
                S::Paused => {
                    // A wave that was admitted soaks again from now before it is judged.
                    let next = match self.phase {
                        WavePhase::Soaking => {
                            Progress { state: S::Running, wave_started_ms: Some(now_ms), ..self }
                        }
                        _ => self.to(S::Running),
                    };
                    done(next, "resumed by an operator".into(), vec![])
                }
                _ => refuse("resume"),
            },
            Command::Abort => {
                if state.is_final() {
                    return refuse("abort");
                }
                done(
                    self.to(S::Aborted),
                    "aborted by an operator; devices keep what they run".into(),
                    vec![],
                )
            }
            Command::Rollback => match state {
                S::Running | S::Paused => {
                    if !shape.has_fallback {
                        return Err(Refused(
                            "the plan names no fallback bundle to roll back to".into(),
                        ));
                    }
                    done(
                        self.to(S::RolledBack),
                        "rolled back by an operator".into(),
                        vec![Effect::RevertAdmitted],
                    )
                }
                _ => refuse("roll back"),
            },
            Command::Advance => match (state, self.phase) {
                (S::Running, WavePhase::AwaitingAdvance) => {
                    Ok(self.after_pass(shape, "advanced by an operator".into()))
                }
                (S::Running, _) => Err(Refused(format!(
                    "wave {} is {}; only a wave that passed its gates can be advanced",
                    self.wave,
                    self.phase.as_str()
                ))),
                _ => refuse("advance"),
            },
        }
    }

    /// The step after the current wave passed: the next wave, or completion.
    fn after_pass(self, shape: &Shape, reason: String) -> Transition {
        if self.wave + 1 >= shape.waves {
            return Transition {
                next: Progress { state: RolloutState::Completed, ..self },
                action: "rollout.complete",
                reason,
                effects: vec![Effect::ReleaseHoldout],
            };
        }
        Transition {
            next: Progress {
                state: RolloutState::Running,
                wave: self.wave + 1,
                phase: WavePhase::Pending,
                wave_started_ms: None,
            },
            action: "rollout.wave.advance",
            reason,
            effects: vec![],
        }
    }

    /// A running rollout whose plan expired at `expires_ms` pauses: devices refuse an expired
    /// plan, so admitting more would only produce refusals.
    pub fn expire(self, now_ms: i64, expires_ms: i64) -> Option<Transition> {
        (self.state == RolloutState::Running && now_ms >= expires_ms).then(|| Transition {
            next: self.to(RolloutState::Paused),
            action: "rollout.expire",
            reason: "the plan expired; create a new rollout to continue".into(),
            effects: vec![],
        })
    }

    /// Whether the current wave's soak is over at `now_ms` (so its gates should be judged).
    pub fn soak_over(&self, shape: &Shape, now_ms: i64) -> bool {
        let soak = shape.soak_ms.get(self.wave as usize).copied().unwrap_or(0);
        self.state == RolloutState::Running
            && self.phase == WavePhase::Soaking
            && self.wave_started_ms.is_some_and(|started| now_ms >= started.saturating_add(soak))
    }

    /// The driver's periodic step at `now_ms`. `judgement` is the gates' verdict on the
    /// current wave, given when [`Progress::soak_over`] holds. `None`: nothing to do.
    pub fn tick(
        self,
        shape: &Shape,
        now_ms: i64,
        judgement: Option<&Judgement>,
    ) -> Option<Transition> {
        if self.state != RolloutState::Running {
            return None;
        }
        match self.phase {
            WavePhase::Pending => Some(Transition {
                next: Progress { phase: WavePhase::Soaking, wave_started_ms: Some(now_ms), ..self },
                action: "rollout.wave.admit",
                reason: format!("wave {} admitted", self.wave),
                effects: vec![Effect::AdmitWave(self.wave)],
            }),
            WavePhase::AwaitingAdvance => None,
            WavePhase::Soaking => {
                if !self.soak_over(shape, now_ms) {
                    return None;
                }
                match judgement? {
                    Judgement::Wait(_) => None,
                    Judgement::Pass => {
                        let reason = format!("wave {} passed its gates", self.wave);
                        if shape.advance == Advance::Manual && self.wave + 1 < shape.waves {
                            return Some(Transition {
                                next: Progress { phase: WavePhase::AwaitingAdvance, ..self },
                                action: "rollout.wave.pass",
                                reason,
                                effects: vec![],
                            });
                        }
                        Some(self.after_pass(shape, reason))
                    }
                    Judgement::Fail(reasons) => {
                        let reason =
                            format!("wave {} failed its gates: {}", self.wave, reasons.join("; "));
                        let (state, effects) = match shape.on_gate_fail {
                            OnGateFail::Rollback if shape.has_fallback => {
                                (RolloutState::RolledBack, vec![Effect::RevertAdmitted])
                            }
                            _ => (RolloutState::Paused, vec![]),
                        };
                        Some(Transition {
                            next: self.to(state),
                            action: "rollout.gate.fail",
                            reason,
                            effects,
                        })
                    }
                }
            }
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(advance: Advance, on_gate_fail: OnGateFail) -> Shape {
        Shape {
            waves: 3,
            soak_ms: vec![1000, 1000, 1000],
            advance,
            on_gate_fail,
            has_fallback: true,
        }
    }

    fn running(wave: u32, phase: WavePhase, started: Option<i64>) -> Progress {
        Progress { state: RolloutState::Running, wave, phase, wave_started_ms: started }
    }

    #[test]
    fn approvals_then_start_then_waves_to_completion() {
        let shape = shape(Advance::Auto, OnGateFail::Pause);
        let progress = Progress::new();
        let refused = progress
            .command(&shape, Command::Start { valid: 1, required: 2 }, 0)
            .expect_err("too few approvals");
        assert!(refused.0.contains("1 valid approvals of the 2"), "{refused}");
        let one = progress.command(&shape, Command::Approved { valid: 1, required: 2 }, 0);
        assert_eq!(one.expect("approve").next.state, RolloutState::AwaitingApproval);
        let two = progress
            .command(&shape, Command::Approved { valid: 2, required: 2 }, 0)
            .expect("approve");
        assert_eq!((two.next.state, two.action), (RolloutState::Approved, "rollout.approve"));
        let started =
            two.next.command(&shape, Command::Start { valid: 2, required: 2 }, 5).expect("start");
        let mut progress = started.next;
        assert_eq!(progress, running(0, WavePhase::Pending, None));
        let mut admitted = Vec::new();
        let mut now = 10;
        loop {
            let judgement = Judgement::Pass;
            let Some(step) = progress.tick(&shape, now, Some(&judgement)) else {
                now += 500;
                continue;
            };
            admitted.extend(step.effects.iter().copied());
            progress = step.next;
            if progress.state == RolloutState::Completed {
                assert_eq!(step.action, "rollout.complete");
                break;
            }
            assert!(now < 100_000, "no end");
        }
        assert_eq!(
            admitted,
            [
                Effect::AdmitWave(0),
                Effect::AdmitWave(1),
                Effect::AdmitWave(2),
                Effect::ReleaseHoldout
            ]
        );
    }

    #[test]
    fn a_wave_is_judged_only_after_its_soak_and_waits_when_told() {
        let shape = shape(Advance::Auto, OnGateFail::Pause);
        let soaking = running(0, WavePhase::Soaking, Some(1000));
        assert_eq!(soaking.tick(&shape, 1999, Some(&Judgement::Pass)), None);
        assert_eq!(soaking.tick(&shape, 2000, Some(&Judgement::Wait("installing".into()))), None);
        let passed = soaking.tick(&shape, 2000, Some(&Judgement::Pass)).expect("step");
        assert_eq!(passed.next, running(1, WavePhase::Pending, None));
        assert_eq!(passed.action, "rollout.wave.advance");
    }

    #[test]
    fn manual_advance_waits_for_the_operator() {
        let shape = shape(Advance::Manual, OnGateFail::Pause);
        let soaking = running(0, WavePhase::Soaking, Some(0));
        let passed = soaking.tick(&shape, 1000, Some(&Judgement::Pass)).expect("step");
        assert_eq!(passed.next.phase, WavePhase::AwaitingAdvance);
        assert_eq!(passed.next.tick(&shape, 99_999, Some(&Judgement::Pass)), None);
        let refused = soaking.command(&shape, Command::Advance, 0).expect_err("soaking");
        assert!(refused.0.contains("only a wave that passed"), "{refused}");
        let advanced = passed.next.command(&shape, Command::Advance, 2000).expect("advance");
        assert_eq!(advanced.next, running(1, WavePhase::Pending, None));
    }

    #[test]
    fn a_failed_gate_pauses_or_rolls_back_per_policy() {
        let fail = Judgement::Fail(vec!["error rate 0.5 > 0.05".into()]);
        let soaking = running(0, WavePhase::Soaking, Some(0));
        let paused = soaking
            .tick(&shape(Advance::Auto, OnGateFail::Pause), 1000, Some(&fail))
            .expect("step");
        assert_eq!(paused.next.state, RolloutState::Paused);
        assert_eq!(paused.action, "rollout.gate.fail");
        assert!(paused.reason.contains("error rate 0.5"), "{}", paused.reason);
        assert!(paused.effects.is_empty());
        let rolled = soaking
            .tick(&shape(Advance::Auto, OnGateFail::Rollback), 1000, Some(&fail))
            .expect("step");
        assert_eq!(rolled.next.state, RolloutState::RolledBack);
        assert_eq!(rolled.effects, [Effect::RevertAdmitted]);
    }

    #[test]
    fn an_expired_plan_pauses_a_running_rollout() {
        let soaking = running(1, WavePhase::Soaking, Some(0));
        assert_eq!(soaking.expire(999, 1000), None);
        let expired = soaking.expire(1000, 1000).expect("expired");
        assert_eq!((expired.next.state, expired.action), (RolloutState::Paused, "rollout.expire"));
        assert_eq!(Progress::new().expire(5000, 1000), None, "only running rollouts");
    }

    #[test]
    fn pause_resume_abort_and_rollback_follow_the_state() {
        let shape = shape(Advance::Auto, OnGateFail::Pause);
        let soaking = running(1, WavePhase::Soaking, Some(0));
        let paused = soaking.command(&shape, Command::Pause, 10).expect("pause").next;
        assert_eq!(paused.tick(&shape, 99_999, Some(&Judgement::Pass)), None, "paused: no step");
        let resumed = paused.command(&shape, Command::Resume, 5000).expect("resume").next;
        assert_eq!(resumed, running(1, WavePhase::Soaking, Some(5000)), "soaks again");
        assert!(resumed.command(&shape, Command::Resume, 0).is_err());
        let rolled = resumed.command(&shape, Command::Rollback, 0).expect("rollback");
        assert_eq!(rolled.effects, [Effect::RevertAdmitted]);
        assert!(rolled.next.command(&shape, Command::Abort, 0).is_err(), "final");
        assert!(rolled.next.command(&shape, Command::Resume, 0).is_err(), "final");
        let aborted = Progress::new().command(&shape, Command::Abort, 0).expect("abort");
        assert_eq!(aborted.next.state, RolloutState::Aborted);
        let no_fallback = Shape { has_fallback: false, ..shape };
        assert!(resumed.command(&no_fallback, Command::Rollback, 0).is_err());
    }
}
