//! `FleetSupervisor`: the root; one `AccountActor` per enabled account, each isolated.
//!
//! A reload is planned first ([`reload::ReloadPlan`], pure) and then carried out here.
//!
//! A crashed account is restarted after its own backoff; an account that ended as
//! `auth_failed`, `failed` or `stopped` is left alone. No account's failure reaches another: they
//! share no client, no lock on the hot path, only the store (whose writes are short) and the
//! status board.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use futures_util::future::join_all;
use mxfleet_config::{AccountAuth, AccountSpec, ReloginMode, ValidConfig};
use mxfleet_matrix::{FailureClass, MatrixFailure, prepare_relogin};
use mxfleet_store::{Store, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::{Deserialize, Serialize};
use tokio::{sync::oneshot, time::Instant};
use tracing::{error, info, warn};

mod reload;

use self::reload::ReloadPlan;
use crate::{
    account::{
        AccountActor, AccountArgs, AccountMsg, REASON_AUTH_FAILED, REASON_FAILED,
        REASON_LOGGED_OUT, REASON_STOPPED,
    },
    homeservers::Homeservers,
    restart::{RestartPolicy, RestartTracker},
    status::{AccountState, StatusBoard},
};

/// The root actor.
pub struct FleetSupervisor;

/// What the fleet needs to start.
pub struct FleetArgs {
    /// The validated configuration.
    pub config: ValidConfig,
    /// The open store.
    pub store: Store,
    /// The status board.
    pub board: StatusBoard,
}

/// Messages of the fleet supervisor.
pub enum FleetMsg {
    /// (Re)start an account after its backoff.
    StartAccount(String),
    /// An operator's start, stop or restart of one account.
    Control {
        /// The account id.
        account: String,
        /// What to do.
        action: Control,
        /// The outcome.
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Log an account that was logged out in again as a new device (`relogin = "auto"`).
    AutoRelogin(String),
    /// Apply a new configuration: start added accounts, stop removed ones, restart changed ones.
    Reload {
        /// The new, validated configuration.
        config: Box<ValidConfig>,
        /// What changed.
        reply: oneshot::Sender<ReloadReport>,
    },
    /// Answer at once: the supervisor's mailbox is moving (liveness probes, the watchdog).
    Ping(oneshot::Sender<()>),
}

/// An operator action on one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Start it (also after `auth_failed`, `failed` or an operator stop), with a fresh backoff.
    Start,
    /// Stop it and keep it stopped until started.
    Stop,
    /// Stop it and start it again.
    Restart,
    /// Stop it, drop its session and stores, and log in again as a new device (password
    /// accounts; for a session the homeserver ended).
    Relogin,
}

/// Why an operator action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No such account in the configuration.
    #[error("no account {0:?} in the configuration")]
    Unknown(String),
    /// The account is configured with `enabled = false`.
    #[error("account {0:?} is disabled in the configuration (enabled = false)")]
    Disabled(String),
    /// `relogin` of an access-token account.
    #[error(
        "account {0:?} logs in with an access token: put a new token in the configuration \
         instead (relogin needs password login)"
    )]
    NotPassword(String),
    /// The re-login could not be prepared; the account was started again as it was.
    #[error("account {account:?} could not be prepared for a re-login: {reason}")]
    Relogin {
        /// The account id.
        account: String,
        /// What went wrong.
        reason: String,
    },
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Accounts started because they are new.
    pub added: Vec<String>,
    /// Accounts stopped because they are gone (or now disabled).
    pub removed: Vec<String>,
    /// Accounts restarted because their settings changed.
    pub restarted: Vec<String>,
    /// Accounts left running untouched.
    pub unchanged: Vec<String>,
}

/// The fleet supervisor's state.
pub struct FleetState {
    slots: BTreeMap<String, Slot>,
    /// Every configured account, disabled ones included, as last loaded.
    configured: BTreeMap<String, AccountSpec>,
    store: Store,
    board: StatusBoard,
    data_dir: PathBuf,
    policy: RestartPolicy,
    shutdown_deadline: Duration,
    /// How long answers in flight get at shutdown.
    drain: Duration,
    homeservers: Homeservers,
}

struct Slot {
    spec: Arc<AccountSpec>,
    actor: Option<ActorRef<AccountMsg>>,
    tracker: RestartTracker,
    /// Stopped by the operator: not started again until the operator says so.
    held: bool,
    /// When the fleet last logged this account in again by itself.
    last_auto_relogin: Option<Instant>,
}

/// The least time between two automatic re-logins of one account.
const AUTO_RELOGIN_INTERVAL: Duration = Duration::from_secs(600);
/// How long a re-login waits for the account's old client to let go of its stores.
const RELOGIN_LOCK_WAIT: Duration = Duration::from_secs(10);

impl Actor for FleetSupervisor {
    type Msg = FleetMsg;
    type State = FleetState;
    type Arguments = FleetArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<FleetMsg>,
        args: FleetArgs,
    ) -> Result<FleetState, ActorProcessingErr> {
        let mut state = FleetState {
            slots: BTreeMap::new(),
            configured: args.config.accounts.clone(),
            store: args.store,
            board: args.board,
            data_dir: args.config.data_dir,
            policy: RestartPolicy::from(&args.config.restart),
            shutdown_deadline: Duration::from_secs(args.config.shutdown_timeout_secs),
            drain: Duration::from_secs(args.config.shutdown_drain_secs),
            homeservers: Homeservers::new(),
        };
        state
            .board
            .set_peers(args.config.peers.into_values().flatten());
        for (id, spec) in args.config.accounts {
            state.add_slot(&myself, id, spec)?;
        }
        info!(accounts = state.slots.len(), "fleet starting");
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<FleetMsg>,
        message: FleetMsg,
        state: &mut FleetState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            FleetMsg::StartAccount(id) => state.start_account(&myself, &id).await,
            FleetMsg::Control {
                account,
                action,
                reply,
            } => {
                let outcome = state.control(&myself, &account, action).await;
                let _ = reply.send(outcome);
            }
            FleetMsg::AutoRelogin(id) => state.auto_relogin(&myself, &id).await,
            FleetMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            FleetMsg::Reload { config, reply } => {
                let report = state.reload(&myself, *config).await?;
                let _ = reply.send(report);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<FleetMsg>,
        event: SupervisionEvent,
        state: &mut FleetState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match &event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => match reason.as_deref() {
                Some(REASON_AUTH_FAILED | REASON_FAILED | REASON_STOPPED | REASON_LOGGED_OUT) => {
                    (cell, None)
                }
                other => (
                    cell,
                    Some(format!("account actor stopped unexpectedly ({other:?})")),
                ),
            },
            _ => return Ok(()),
        };
        let Some((id, slot)) = state.slots.iter_mut().find(|(_, slot)| {
            slot.actor
                .as_ref()
                .is_some_and(|a| a.get_id() == cell.get_id())
        }) else {
            return Ok(());
        };
        slot.actor = None;
        let logged_out = matches!(
            &event,
            SupervisionEvent::ActorTerminated(_, _, Some(reason)) if reason == REASON_LOGGED_OUT
        );
        if logged_out && slot.spec.encryption.relogin == ReloginMode::Auto {
            let wait = slot.last_auto_relogin.map_or(Duration::ZERO, |at| {
                AUTO_RELOGIN_INTERVAL.saturating_sub(at.elapsed())
            });
            info!(account = %id, wait_secs = wait.as_secs(), "logged out; re-login (auto) scheduled");
            let id = id.clone();
            ractor::time::send_after(wait, myself.get_cell(), move || FleetMsg::AutoRelogin(id));
            return Ok(());
        }
        if let Some(failure) = failure {
            // The account crashed: restart it alone, after its own backoff.
            let id = id.clone();
            state.schedule_start(&myself, &id, failure);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<FleetMsg>,
        state: &mut FleetState,
    ) -> Result<(), ActorProcessingErr> {
        let deadline = state.shutdown_deadline;
        let stopping = state.slots.iter_mut().filter_map(|(id, slot)| {
            let actor = slot.actor.take()?;
            let id = id.clone();
            Some(async move {
                let done = actor
                    .stop_and_wait(Some(REASON_STOPPED.into()), Some(deadline))
                    .await;
                if done.is_err() {
                    warn!(account = %id, "account did not stop within the deadline; killing it");
                    actor.kill();
                }
            })
        });
        join_all(stopping).await;
        info!("fleet stopped");
        Ok(())
    }
}

impl FleetState {
    /// Registers `spec` and, if it is enabled, starts it.
    fn add_slot(
        &mut self,
        myself: &ActorRef<FleetMsg>,
        id: String,
        spec: AccountSpec,
    ) -> Result<(), ActorProcessingErr> {
        if !spec.enabled {
            self.board.transition(&id, AccountState::Disabled, None);
            return Ok(());
        }
        // Known before the account connects, so no bot answers a sibling that is starting.
        self.board.transition(&id, AccountState::Starting, None);
        let configured = spec.user_id.clone();
        self.board.update(&id, |s| s.user_id = configured);
        myself.cast(FleetMsg::StartAccount(id.clone()))?;
        let slot = Slot {
            spec: Arc::new(spec),
            actor: None,
            tracker: RestartTracker::new(self.policy.clone()),
            held: false,
            last_auto_relogin: None,
        };
        self.slots.insert(id, slot);
        Ok(())
    }

    /// Stops `id`'s actor (if running) and waits for it, within the shutdown deadline.
    async fn stop_actor(&mut self, id: &str) {
        let Some(actor) = self.slots.get_mut(id).and_then(|slot| slot.actor.take()) else {
            return;
        };
        let deadline = self.shutdown_deadline;
        if actor
            .stop_and_wait(Some(REASON_STOPPED.into()), Some(deadline))
            .await
            .is_err()
        {
            warn!(account = %id, "account did not stop within the deadline; killing it");
            actor.kill();
        }
    }

    async fn control(
        &mut self,
        myself: &ActorRef<FleetMsg>,
        id: &str,
        action: Control,
    ) -> Result<(), ControlError> {
        match self.configured.get(id) {
            None => return Err(ControlError::Unknown(id.to_owned())),
            Some(spec) if !spec.enabled => return Err(ControlError::Disabled(id.to_owned())),
            Some(spec)
                if action == Control::Relogin && !matches!(spec.auth, AccountAuth::Password(_)) =>
            {
                return Err(ControlError::NotPassword(id.to_owned()));
            }
            Some(_) => {}
        }
        info!(account = %id, ?action, "operator action");
        if action == Control::Relogin {
            return self.relogin(myself, id).await;
        }
        if matches!(action, Control::Stop | Control::Restart) {
            if let Some(slot) = self.slots.get_mut(id) {
                slot.held = true;
            }
            self.stop_actor(id).await;
            self.board.transition(id, AccountState::Stopped, None);
        }
        if matches!(action, Control::Start | Control::Restart)
            && let Some(slot) = self.slots.get_mut(id)
        {
            slot.held = false;
            slot.tracker = RestartTracker::new(self.policy.clone());
            self.start_account(myself, id).await;
        }
        Ok(())
    }

    /// Stops `id`, gets it ready to log in as a new device, and starts it again. If it cannot
    /// be prepared (its old client does not let go of the stores in time), it is started
    /// again as it was.
    async fn relogin(&mut self, myself: &ActorRef<FleetMsg>, id: &str) -> Result<(), ControlError> {
        if let Some(slot) = self.slots.get_mut(id) {
            slot.held = true;
        }
        self.stop_actor(id).await;
        let prepared = self.prepare_relogin(id).await;
        if let Some(slot) = self.slots.get_mut(id) {
            slot.held = false;
            slot.tracker = RestartTracker::new(self.policy.clone());
        }
        if let Err(e) = &prepared {
            warn!(account = %id, error = %e, "re-login not prepared; starting the account as it was");
        }
        self.start_account(myself, id).await;
        prepared.map_err(|e| ControlError::Relogin {
            account: id.to_owned(),
            reason: e.to_string(),
        })
    }

    /// [`prepare_relogin`], retried while the account's old client still holds its stores.
    async fn prepare_relogin(&self, id: &str) -> Result<(), MatrixFailure> {
        let deadline = Instant::now() + RELOGIN_LOCK_WAIT;
        loop {
            match prepare_relogin(&self.store, &self.data_dir, id).await {
                Err(e) if e.class == FailureClass::Transient && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                done => return done,
            }
        }
    }

    /// A re-login scheduled after a logout (`relogin = "auto"`): done unless the operator took
    /// the account over meanwhile.
    async fn auto_relogin(&mut self, myself: &ActorRef<FleetMsg>, id: &str) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let waiting = slot.actor.is_none() && !slot.held;
        let logged_out = self
            .board
            .account(id)
            .is_some_and(|s| s.state == AccountState::AuthFailed);
        if !(waiting && logged_out) {
            return;
        }
        slot.last_auto_relogin = Some(Instant::now());
        info!(account = %id, "logging the account in again as a new device (relogin = auto)");
        if let Err(e) = self.relogin(myself, id).await {
            error!(account = %id, error = %e, "automatic re-login failed");
        }
    }

    /// Applies `config` as its [`ReloadPlan`] says: accounts whose settings are unchanged are
    /// not touched.
    async fn reload(
        &mut self,
        myself: &ActorRef<FleetMsg>,
        config: ValidConfig,
    ) -> Result<ReloadReport, ActorProcessingErr> {
        let plan = ReloadPlan::between(&self.configured, &config.accounts);
        self.board
            .set_peers(config.peers.values().flatten().cloned());
        self.policy = RestartPolicy::from(&config.restart);
        self.shutdown_deadline = Duration::from_secs(config.shutdown_timeout_secs);
        self.drain = Duration::from_secs(config.shutdown_drain_secs);
        for id in plan.remove.iter().chain(&plan.restart) {
            self.stop_actor(id).await;
            self.slots.remove(id);
        }
        for id in &plan.remove {
            self.board.remove(id);
        }
        for id in plan.restart.iter().chain(&plan.add) {
            if let Some(spec) = config.accounts.get(id) {
                self.add_slot(myself, id.clone(), spec.clone())?;
            }
        }
        let report = plan.report(&config.accounts);
        self.configured = config.accounts;
        info!(
            added = ?report.added,
            removed = ?report.removed,
            restarted = ?report.restarted,
            unchanged = report.unchanged.len(),
            "configuration reloaded"
        );
        Ok(report)
    }

    async fn start_account(&mut self, myself: &ActorRef<FleetMsg>, id: &str) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if slot.actor.is_some() || slot.held {
            return;
        }
        let backend = match mxfleet_backend::build(&slot.spec.backend) {
            Ok(backend) => backend,
            Err(e) => {
                self.board
                    .transition(id, AccountState::Failed, Some(e.to_string()));
                return;
            }
        };
        let args = AccountArgs {
            spec: slot.spec.clone(),
            store: self.store.clone(),
            board: self.board.clone(),
            data_dir: self.data_dir.clone(),
            policy: self.policy.clone(),
            backend,
            homeservers: self.homeservers.clone(),
            drain: self.drain,
        };
        match Actor::spawn_linked(
            Some(format!("account:{id}")),
            AccountActor,
            args,
            myself.get_cell(),
        )
        .await
        {
            Ok((actor, _)) => {
                slot.tracker.started(Instant::now());
                slot.actor = Some(actor);
            }
            Err(e) => self.schedule_start(myself, id, format!("could not start: {e}")),
        }
    }

    /// Starts `id` again after its backoff, recording `failure` in its status.
    fn schedule_start(&mut self, myself: &ActorRef<FleetMsg>, id: &str, failure: String) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let decision = slot
            .tracker
            .failed(Instant::now(), rand::random::<f64>(), None);
        error!(
            account = %id,
            error = %failure,
            delay_ms = decision.delay.as_millis() as u64,
            parked = decision.parked,
            "account failed; restarting it after backoff"
        );
        self.board
            .transition(id, AccountState::Backoff, Some(failure));
        let until = now_ms() + decision.delay.as_millis() as u64;
        crate::measure::count(crate::measure::RESTARTS, id, "start_failed", 1);
        self.board.update(id, |s| {
            s.backoff_until_ms = Some(until);
            s.restarts += 1;
        });
        let id = id.to_owned();
        ractor::time::send_after(decision.delay, myself.get_cell(), move || {
            FleetMsg::StartAccount(id)
        });
    }
}
