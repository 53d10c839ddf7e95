//! Default values, one function per key so serde and the docs agree.

use std::path::PathBuf;

pub(crate) fn data_dir() -> PathBuf {
    PathBuf::from("data")
}
pub(crate) fn shard_count() -> u32 {
    1
}
pub(crate) fn log_level() -> String {
    "info".into()
}
pub(crate) fn shutdown_timeout_secs() -> u64 {
    10
}
pub(crate) fn shutdown_drain_secs() -> u64 {
    5
}
pub(crate) fn initial_delay_ms() -> u64 {
    500
}
pub(crate) fn max_delay_ms() -> u64 {
    60_000
}
pub(crate) fn multiplier() -> f64 {
    2.0
}
pub(crate) fn jitter_ratio() -> f64 {
    0.2
}
pub(crate) fn healthy_after_secs() -> u64 {
    60
}
pub(crate) fn max_restarts() -> u32 {
    5
}
pub(crate) fn restart_window_secs() -> u64 {
    60
}
pub(crate) fn echo_prefix() -> String {
    String::new()
}
pub(crate) fn request_timeout_secs() -> u64 {
    120
}
pub(crate) fn enabled() -> bool {
    true
}
pub(crate) fn catch_up_max_age_secs() -> u64 {
    600
}
pub(crate) fn sync_timeout_secs() -> u64 {
    30
}
pub(crate) fn sync_stall_secs() -> u64 {
    30
}
pub(crate) fn sync_timeline_limit() -> u32 {
    50
}
pub(crate) fn backfill_max_events() -> u32 {
    500
}
pub(crate) fn access_policy() -> crate::model::AccessPolicy {
    crate::model::AccessPolicy::Allowlist
}
pub(crate) fn stream_min_initial_chars() -> usize {
    30
}
pub(crate) fn edit_throttle_ms() -> u64 {
    800
}
pub(crate) fn max_edits_per_message() -> u32 {
    40
}
pub(crate) fn max_answer_chars() -> usize {
    40_000
}
pub(crate) fn max_answer_parts() -> usize {
    6
}
pub(crate) fn ack_reaction() -> String {
    "👀".into()
}
/// Long enough for a fast backend's answer to show first (then no cue is sent: the ack
/// reaction, a room event, sent before the answer held the answer back by a whole send), short
/// enough that a slow one's cues show within 300 ms of receipt. See docs/benchmarks.md.
pub(crate) fn cue_delay_ms() -> u64 {
    250
}
pub(crate) fn per_sender_per_minute() -> u32 {
    20
}
pub(crate) fn per_room_per_minute() -> u32 {
    60
}
pub(crate) fn inbox_retention_days() -> u64 {
    7
}
/// Enough for the stores' calls of a busy fleet on a small machine: each of them is short, and
/// a thread beyond what the cores can run costs memory (its stack and allocator caches) without
/// finishing the work sooner (docs/benchmarks.md, run 13).
pub(crate) fn blocking_threads() -> usize {
    16
}
/// Small: an account's stores then cost about 0.6 MiB at a thousand accounts instead of about
/// 0.9 (docs/benchmarks.md, run 13); a restart of a thousand still takes 13 s, since a start
/// opens a bounded number of accounts at once (run 14).
pub(crate) fn store_page_cache_kib() -> u32 {
    16
}
pub(crate) fn log_buffer_lines() -> usize {
    8192
}
pub(crate) fn media_timeout_secs() -> u64 {
    60
}
pub(crate) fn max_media_bytes() -> u64 {
    25 * 1024 * 1024
}
pub(crate) fn history_max_messages() -> usize {
    20
}
pub(crate) fn verification_timeout_secs() -> u64 {
    300
}
pub(crate) fn utd_notice_cooldown_secs() -> u64 {
    3600
}
pub(crate) fn otp_ttl_secs() -> u64 {
    600
}
pub(crate) fn otp_challenges_per_hour() -> u32 {
    20
}
pub(crate) fn otp_cooldown_secs() -> u64 {
    300
}
pub(crate) fn admin_bind() -> String {
    "127.0.0.1:8787".into()
}
pub(crate) fn webhook_format() -> crate::model::StreamFormat {
    crate::model::StreamFormat::Auto
}
pub(crate) fn command_input() -> crate::model::CommandInput {
    crate::model::CommandInput::Prompt
}
