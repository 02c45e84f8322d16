//! The system tests: every system call from user mode, including its error
//! paths, as one table ([`ALL`]). Adding a test is one line there.
//!
//! Tests run one after another in the root task. Each leaves nothing
//! behind on success (capabilities deleted, mappings removed, threads
//! finished or killed); addresses for mappings come from [`next_va`] and
//! are never reused, so a failed test cannot disturb the next one.

mod basic;
mod caps;
pub mod channels;
mod devices;
mod faults;
pub mod ipc;
mod leaks;
mod memory;
mod ownership;
mod page_tables;
pub mod processes;
mod smp;
mod sync;
mod threads;
mod time;
mod zero_copy;

pub use leaks::record_baseline;

use crate::harness::{Ctx, Test};
use alloc::string::String;
use core::sync::atomic::{AtomicUsize, Ordering};
use keel_abi::boot::RootInfo;
use keel_abi::cap::CapToken;
use keel_rt::syscall::yield_now;

/// Tests that make a thread fault on purpose (NULL dereference, illegal
/// instruction, ...). Each runs in its own process (capability space),
/// which the kernel must kill without disturbing the root task. Set to
/// `false` if the kernel cannot kill a faulting process yet.
pub const FAULT_TESTS: bool = true;

/// Every system test, in the order they run.
pub const ALL: &[Test] = &[
    test!(basic::root_info_is_valid),
    test!(basic::root_info_tokens_have_their_types),
    test!(basic::debug_write_works),
    test!(basic::debug_write_rejects_bad_buffers),
    test!(basic::system_info_reads_every_key),
    test!(basic::system_info_rejects_bad_keys),
    test!(basic::monotonic_clock_runs_forward),
    test!(time::sleep_lasts_at_least_its_duration),
    test!(time::sleepers_wake_in_deadline_order),
    test!(time::a_hog_cannot_starve_an_equal_priority_thread),
    test!(time::equal_priority_hogs_share_the_cpu),
    test!(time::a_woken_higher_priority_thread_preempts_a_hog),
    test!(time::sleepers_can_be_suspended_and_killed),
    test!(time::equal_nice_hogs_share_the_cpu),
    test!(time::nice_weights_set_the_ratio),
    test!(time::real_time_beats_normal_beats_idle),
    test!(time::fifo_threads_are_not_time_sliced),
    test!(time::thread_set_sched_rejects_bad_arguments),
    test!(time::statistics_count_run_time_switches_and_idle),
    test!(time::ipc_gives_up_at_its_deadline),
    test!(time::timers_fire_once_or_periodically_until_disarmed),
    test!(time::timer_calls_reject_bad_arguments),
    test!(basic::unknown_syscalls_are_refused),
    test!(basic::syscall_preserves_registers),
    test!(caps::identify_root_caps),
    test!(caps::derive_with_fewer_rights),
    test!(caps::derive_with_more_rights_is_refused),
    test!(caps::derive_rejects_undefined_rights),
    test!(caps::badge_is_set_once),
    test!(caps::delete_makes_token_stale),
    test!(caps::delete_keeps_children),
    test!(caps::revoke_destroys_descendants),
    test!(caps::revoke_needs_revoke_right),
    test!(caps::forged_tokens_are_refused),
    test!(caps::wrong_object_type_is_refused),
    test!(caps::cap_space_create_checks_arguments),
    test!(caps::grant_copies_into_another_space),
    test!(caps::grant_into_full_space_fails),
    test!(caps::delegate_moves_the_capability),
    test!(caps::cap_space_freed_with_its_last_capability),
    test!(memory::map_write_read_unmap),
    test!(memory::same_object_mapped_twice_shares_memory),
    test!(memory::mem_create_charges_the_pool),
    test!(memory::eager_mem_create_allocates_frames),
    test!(memory::mem_create_rejects_bad_arguments),
    test!(memory::map_refuses_write_and_execute),
    test!(memory::map_checks_the_range),
    test!(memory::map_needs_rights),
    test!(memory::protect_changes_permissions),
    test!(memory::unmap_checks_arguments),
    test!(memory::aspace_create_charges_and_maps),
    test!(page_tables::one_page_per_gib_exhausts_the_pool_not_memory),
    test!(memory::boot_image_is_the_elf_file),
    test!(threads::thread_runs_and_exits),
    test!(threads::thread_writes_mapped_memory),
    test!(threads::yield_switches_between_threads),
    test!(threads::suspend_and_resume),
    test!(threads::kill_stops_a_thread),
    test!(threads::thread_create_rejects_bad_arguments),
    test!(threads::thread_in_its_own_cspace_runs),
    test!(threads::priority_bounds),
    test!(threads::higher_priority_thread_runs_first),
    test!(threads::lower_priority_thread_waits),
    test!(threads::affinity_bounds),
    test!(threads::tls_is_per_thread),
    test!(threads::tls_rejects_bad_capabilities),
    test!(threads::tls_non_canonical_base_is_harmless),
    test!(threads::fp_registers_are_per_thread),
    test!(threads::runs_in_another_address_space),
    test!(faults::null_dereference_kills_only_its_process),
    test!(faults::kernel_address_read_kills_only_its_process),
    test!(faults::illegal_instruction_kills_only_its_process),
    test!(faults::breakpoint_kills_only_its_process),
    test!(faults::write_to_code_kills_only_its_process),
    test!(faults::write_to_root_info_kills_only_its_process),
    test!(faults::access_after_unmap_faults),
    test!(faults::write_after_protect_faults),
    test!(ipc::objects_are_created_and_charged),
    test!(ipc::calls_check_capabilities),
    test!(ipc::malformed_messages_are_refused),
    test!(ipc::nonblocking_calls_would_block),
    test!(ipc::reply_without_a_call_is_refused),
    test!(ipc::call_reply_register_words),
    test!(ipc::call_reply_64_words_through_buffers),
    test!(ipc::call_reply_504_words_through_buffers),
    test!(ipc::send_recv_one_way),
    test!(ipc::reply_recv_serves_many_calls),
    test!(ipc::call_reply_across_address_spaces),
    test!(ipc::queued_senders_are_served_in_order),
    test!(ipc::badges_identify_clients),
    test!(ipc::capabilities_are_transferred),
    test!(ipc::memory_is_shared_through_ipc),
    test!(ipc::blocked_sender_killed_leaves_the_queue),
    test!(ipc::blocked_receiver_suspended_returns_an_error),
    test!(ipc::caller_killed_before_the_reply),
    test!(ipc::server_killed_mid_call_disconnects_the_caller),
    test!(ipc::endpoint_deleted_under_blocked_threads),
    test!(ipc::ipc_buffer_is_checked),
    test!(ipc::notifications_signal_wait_poll),
    test!(ipc::bound_notification_wakes_recv),
    test!(ipc::fault_handler_maps_and_resumes),
    test!(ipc::fault_handler_kills),
    test!(ownership::deleting_the_last_thread_capability_ends_it),
    test!(ownership::a_thread_is_charged_to_its_pool),
    test!(ownership::capability_spaces_cannot_hold_each_other),
    test!(channels::channel_transfers_messages_between_threads),
    test!(channels::channel_batches_wake_once_per_batch),
    test!(channels::channel_back_pressure_blocks_the_producer_until_drained),
    test!(channels::registry_register_lookup_unregister),
    test!(channels::a_flooding_client_cannot_starve_another),
    test!(channels::a_flooding_client_cannot_starve_another_slow_path),
    test!(channels::a_yielding_flooding_client_cannot_starve_another),
    test!(channels::channel_benchmarks_run),
    test!(zero_copy::page_ranges_move_and_share_through_ipc),
    test!(zero_copy::page_range_transfer_refuses_bad_arguments),
    test!(devices::irq_handler_create_rejects_bad_lines),
    test!(devices::line_zero_is_refused),
    test!(devices::irq_handler_create_needs_rights),
    test!(devices::irq_line_is_bound_once_and_freed_with_its_last_capability),
    test!(devices::killing_a_driver_releases_its_irq),
    test!(devices::io_ports_are_x86_only_and_checked),
    test!(devices::mem_from_device_refuses_ram_and_the_interrupt_controller),
    test!(devices::interrupts_reach_user_space_until_acknowledged),
    test!(sync::a_mutex_excludes_threads_on_every_cpu),
    test!(sync::a_semaphore_bounds_how_many_are_inside),
    test!(sync::a_semaphore_hands_permits_to_waiting_threads),
    test!(sync::a_condvar_wakes_one_or_every_waiter),
    test!(sync::a_rwlock_never_shows_a_write_half_done),
    test!(sync::a_barrier_holds_each_round_until_all_arrive),
    test!(sync::locks_need_a_pool_and_give_back_their_memory),
    test!(smp::every_cpu_is_online),
    test!(smp::busy_threads_spread_over_every_cpu),
    test!(smp::a_pinned_thread_never_migrates),
    test!(smp::affinity_rejects_cpus_that_are_not_there),
    test!(smp::ipc_between_threads_on_different_cpus),
    test!(smp::unmapping_a_page_faults_a_reader_on_another_cpu),
    test!(smp::cpus_go_offline_and_come_back),
    test!(smp::a_thousand_threads_wake_each_other_across_cpus),
    test!(processes::spawn_passes_arguments_and_reports_the_exit_status),
    test!(processes::passed_capabilities_arrive),
    test!(processes::a_fault_ends_only_its_process),
    test!(processes::wait_without_hang_and_for_nobody),
    test!(processes::killing_a_server_in_ipc_fails_its_caller),
    test!(processes::terminate_is_a_request_the_process_handles),
    test!(processes::fork_copies_on_write),
    test!(processes::exec_replaces_the_image),
    test!(processes::bad_images_are_refused),
    test!(processes::a_fork_bomb_is_held_by_its_pool),
    test!(processes::many_processes_give_everything_back),
    test!(processes::a_minimal_program_runs_in_a_small_process),
    test!(processes::a_position_independent_program_is_relocated),
    test!(processes::thousands_alive_at_once_give_everything_back),
    test!(leaks::everything_was_returned),
];

/// Yields this many times at most while waiting for another thread.
pub const WAIT_YIELDS: usize = 1000;

/// The root task's capabilities, from its information page.
#[derive(Clone, Copy)]
pub struct Root {
    pub info: &'static RootInfo,
    pub pool: CapToken,
    pub boot_image: CapToken,
    pub aspace: CapToken,
    pub cspace: CapToken,
    pub thread: CapToken,
}

/// The root task's capabilities.
pub fn root() -> Result<Root, String> {
    let info = keel_rt::root_info().ctx("root information page")?;
    Ok(Root {
        info,
        pool: CapToken::from_raw(info.pool),
        boot_image: CapToken::from_raw(info.boot_image),
        aspace: CapToken::from_raw(info.aspace),
        cspace: CapToken::from_raw(info.cspace),
        thread: CapToken::from_raw(info.thread),
    })
}

/// Page size (every architecture Keel supports uses 4 KiB pages).
pub const PAGE: usize = 4096;

/// First address handed out by [`next_va`]: far above the image and heap,
/// far below the stack.
const SCRATCH_BASE: usize = 0x10_0000_0000;
static NEXT_VA: AtomicUsize = AtomicUsize::new(SCRATCH_BASE);

/// A fresh, never used, page-aligned range of `pages` pages (followed by
/// an unmapped guard page).
pub fn next_va(pages: usize) -> usize {
    NEXT_VA.fetch_add((pages + 1) * PAGE, Ordering::Relaxed)
}

/// Yields `n` times.
pub fn yield_n(n: usize) {
    for _ in 0..n {
        let _ = yield_now();
    }
}

/// How long [`wait_until`] waits, in ns of the clock.
const WAIT_NS: u64 = 2_000_000_000;

/// Yields until `done()`, for at most [`WAIT_NS`]; whether `done()`. For
/// waiting on another thread, which may run on another CPU and, under
/// emulation, be held up by the host.
pub fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let end = keel_rt::syscall::now_ns().saturating_add(WAIT_NS);
    while !done() {
        if keel_rt::syscall::now_ns() > end {
            return done();
        }
        let _ = yield_now();
    }
    true
}

/// A token that differs from `t` only in its generation.
pub fn stale(t: CapToken) -> CapToken {
    CapToken::from_raw(t.raw() ^ (1 << keel_abi::cap::GENERATION_SHIFT))
}
