//! Scale-out: which accounts this replica runs, and the user ids of the other replicas' bots
//! (so this one never answers them).

use std::collections::BTreeMap;

use super::{Checker, shard_of};
use crate::{AccountSpec, ShardConfig};

/// This replica's accounts, and the others' (id → configured user id).
pub(super) fn split(
    check: &mut Checker<'_>,
    shard: ShardConfig,
    accounts: BTreeMap<String, AccountSpec>,
) -> (
    BTreeMap<String, AccountSpec>,
    BTreeMap<String, Option<String>>,
) {
    check.require(shard.count >= 1, "shard.count", "must be at least 1");
    check.require(
        shard.index < shard.count.max(1),
        "shard.index",
        &format!("must be below shard.count ({})", shard.count),
    );
    if shard.count <= 1 {
        return (accounts, BTreeMap::new());
    }
    let (owned, others): (BTreeMap<_, _>, BTreeMap<_, _>) = accounts
        .into_iter()
        .partition(|(id, _)| shard_of(id, shard.count) == shard.index);
    let mut peers = BTreeMap::new();
    for (id, spec) in others {
        if spec.user_id.is_none() {
            check.warn(
                &format!("accounts.{id}.user_id"),
                &format!(
                    "is not set and the account runs on replica {}: this replica cannot \
                     tell its messages from a human's (bots may answer each other); set it",
                    shard_of(&id, shard.count)
                ),
            );
        }
        peers.insert(id, spec.user_id);
    }
    (owned, peers)
}
