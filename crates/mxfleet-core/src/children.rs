//! An account's child actors besides the sync: the `StreamEditor`, the `CryptoActor` (password
//! accounts) and the `OtpGate` (self-approval on). Each is linked to its `AccountActor`, which
//! restarts it when it crashes; the room workers reach the current one through a shared
//! [`ChildHandle`], and ask it with a deadline ([`answer`]), so a stuck child cannot hang a room.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use ractor::{Actor, ActorCell, ActorRef, MessagingErr, rpc::CallResult};
use tracing::warn;

use crate::{
    crypto::{CryptoActor, CryptoArgs, CryptoMsg},
    error::AccountError,
    otp::{OtpArgs, OtpGate, OtpMsg},
    status::{ChildState, StatusBoard},
    stream_editor::{EditorMsg, StreamEditor},
};

/// A child actor of the account, shared with the room workers and replaced when the child is
/// restarted.
pub(crate) struct ChildHandle<M>(Arc<RwLock<Option<ActorRef<M>>>>);

/// The account's children.
#[derive(Clone, Default)]
pub(crate) struct Children {
    /// The `StreamEditor`.
    pub(crate) editor: ChildHandle<EditorMsg>,
    /// The `OtpGate`, if self-approval is on.
    pub(crate) otp: ChildHandle<OtpMsg>,
    /// The `CryptoActor`, for password accounts.
    pub(crate) crypto: ChildHandle<CryptoMsg>,
}

/// Which child an actor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Child {
    /// The `StreamEditor`.
    Editor,
    /// The `CryptoActor`.
    Crypto,
    /// The `OtpGate`.
    OtpGate,
}

impl Children {
    /// Which child `cell` is, if it is a current one.
    pub(crate) fn which(&self, cell: &ActorCell) -> Option<Child> {
        if self.editor.is(cell) {
            Some(Child::Editor)
        } else if self.crypto.is(cell) {
            Some(Child::Crypto)
        } else if self.otp.is(cell) {
            Some(Child::OtpGate)
        } else {
            None
        }
    }

    /// Starts the `StreamEditor`; without one, answers are streamed by the room workers.
    pub(crate) async fn spawn_editor(&self, parent: ActorCell, board: &StatusBoard, id: &str) {
        let editor = match Actor::spawn_linked(None, StreamEditor, (), parent).await {
            Ok((editor, _)) => Some(editor),
            Err(e) => {
                warn!(error = %e, "could not start the stream editor; answers are streamed inline");
                None
            }
        };
        let state = running_or(editor.is_some(), ChildState::Stopped);
        board.update(id, |s| s.stream_editor = state);
        self.editor.set(editor);
    }

    /// Starts (or replaces) the `CryptoActor`.
    pub(crate) async fn spawn_crypto(&self, parent: ActorCell, args: CryptoArgs) {
        let (board, id) = (args.board.clone(), args.spec.id.clone());
        if let Some(old) = self.crypto.set(None) {
            old.stop(None);
        }
        let crypto = match Actor::spawn_linked(None, CryptoActor, args, parent).await {
            Ok((crypto, _)) => Some(crypto),
            Err(e) => {
                warn!(error = %e, "could not start the crypto actor");
                None
            }
        };
        let state = running_or(crypto.is_some(), ChildState::Stopped);
        board.update(&id, |s| s.crypto = Some(state));
        self.crypto.set(crypto);
    }

    /// Starts the `OtpGate`; without one, unknown senders' DMs stay pending.
    pub(crate) async fn spawn_otp_gate(
        &self,
        parent: ActorCell,
        args: OtpArgs,
        board: &StatusBoard,
    ) {
        let id = args.account.clone();
        let gate = match Actor::spawn_linked(None, OtpGate, args, parent).await {
            Ok((gate, _)) => Some(gate),
            Err(e) => {
                warn!(error = %e, "could not start the OTP gate");
                None
            }
        };
        let state = running_or(gate.is_some(), ChildState::Restarting);
        board.update(&id, |s| s.otp_gate = Some(state));
        self.otp.set(gate);
    }

    /// Stops every child (the account is stopping).
    pub(crate) fn stop_all(&self, reason: &str) {
        let cells = [
            self.editor.set(None).map(|c| c.get_cell()),
            self.crypto.set(None).map(|c| c.get_cell()),
            self.otp.set(None).map(|c| c.get_cell()),
        ];
        for cell in cells.into_iter().flatten() {
            cell.stop(Some(reason.to_owned()));
        }
    }
}

impl<M> Default for ChildHandle<M> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<M> Clone for ChildHandle<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> ChildHandle<M> {
    /// The current child, if one is running.
    pub(crate) fn get(&self) -> Option<ActorRef<M>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the child; returns the previous one.
    pub(crate) fn set(&self, child: Option<ActorRef<M>>) -> Option<ActorRef<M>> {
        std::mem::replace(
            &mut *self
                .0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            child,
        )
    }

    /// Whether `cell` is the current child.
    pub(crate) fn is(&self, cell: &ActorCell) -> bool {
        self.get().is_some_and(|c| c.get_id() == cell.get_id())
    }
}

/// The reply of a call to `child` made with `deadline`, or why there is none.
pub(crate) fn answer<T, M>(
    child: &'static str,
    deadline: Duration,
    called: Result<CallResult<T>, MessagingErr<M>>,
) -> Result<T, AccountError> {
    match called {
        Ok(CallResult::Success(reply)) => Ok(reply),
        Ok(CallResult::Timeout) => Err(AccountError::ChildTimeout {
            child,
            after: deadline,
        }),
        Ok(CallResult::SenderError) | Err(_) => Err(AccountError::ChildGone(child)),
    }
}

fn running_or(running: bool, otherwise: ChildState) -> ChildState {
    if running {
        ChildState::Running
    } else {
        otherwise
    }
}
