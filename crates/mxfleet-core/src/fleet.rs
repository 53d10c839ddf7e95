//! `FleetSupervisor`: the root; one `AccountActor` per enabled account, each isolated.
//!
//! A crashed account is restarted after its own backoff; an account that ended as
//! `auth_failed`, `failed` or `stopped` is left alone. No account's failure reaches another: they
//! share no client, no lock on the hot path, only the store (whose writes are short) and the
//! status board.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use futures_util::future::join_all;
use mxfleet_config::{AccountSpec, ValidConfig};
use mxfleet_store::{Store, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::{
    account::{
        AccountActor, AccountArgs, AccountMsg, REASON_AUTH_FAILED, REASON_FAILED, REASON_STOPPED,
    },
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
}

/// The fleet supervisor's state.
pub struct FleetState {
    slots: BTreeMap<String, Slot>,
    store: Store,
    board: StatusBoard,
    data_dir: PathBuf,
    policy: RestartPolicy,
    shutdown_deadline: Duration,
}

struct Slot {
    spec: Arc<AccountSpec>,
    actor: Option<ActorRef<AccountMsg>>,
    tracker: RestartTracker,
}

impl Actor for FleetSupervisor {
    type Msg = FleetMsg;
    type State = FleetState;
    type Arguments = FleetArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<FleetMsg>,
        args: FleetArgs,
    ) -> Result<FleetState, ActorProcessingErr> {
        let policy = RestartPolicy::from(&args.config.restart);
        let mut slots = BTreeMap::new();
        for (id, spec) in args.config.accounts {
            if !spec.enabled {
                args.board.transition(&id, AccountState::Disabled, None);
                continue;
            }
            // Known before the account connects, so no bot answers a sibling that is starting.
            args.board.transition(&id, AccountState::Starting, None);
            let configured = spec.user_id.clone();
            args.board.update(&id, |s| s.user_id = configured);
            myself.cast(FleetMsg::StartAccount(id.clone()))?;
            slots.insert(
                id,
                Slot {
                    spec: Arc::new(spec),
                    actor: None,
                    tracker: RestartTracker::new(policy.clone()),
                },
            );
        }
        info!(accounts = slots.len(), "fleet starting");
        Ok(FleetState {
            slots,
            store: args.store,
            board: args.board,
            data_dir: args.config.data_dir,
            policy,
            shutdown_deadline: Duration::from_secs(args.config.shutdown_timeout_secs),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<FleetMsg>,
        message: FleetMsg,
        state: &mut FleetState,
    ) -> Result<(), ActorProcessingErr> {
        let FleetMsg::StartAccount(id) = message;
        state.start_account(&myself, &id).await;
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
                Some(REASON_AUTH_FAILED | REASON_FAILED | REASON_STOPPED) => (cell, None),
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
    async fn start_account(&mut self, myself: &ActorRef<FleetMsg>, id: &str) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if slot.actor.is_some() {
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
