//! The tokio driver: timers on paused time, per-key delivery order, isolation, graceful shutdown.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CheckOpts, RoutedMsg, check_history, ends, starts, ts};
use futures::future::BoxFuture;
use hooks_core::dispatch::{DispatchConfig, Dispatcher};
use hooks_core::event::{
    AnyEvent, CloseReason, EventId, MessageReceived, SessionEnd, SessionKey, SessionStart, StartCause,
};
use hooks_core::lifecycle::{DailyReset, Policy, SessionIds};
use hooks_core::registry::{Hook, Registry};
use hooks_core::runtime::{Runtime, RuntimeError, TokioClock};
use hooks_core::store::MemoryStore;
use hooks_core::{HookContext, HookError, State};

/// Collects delivered events; lives in the dispatcher's state so parallel tests do not share it.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<AnyEvent>>);

impl Recorder {
    fn push(ctx: &HookContext<'_>, ev: AnyEvent) {
        ctx.state::<Recorder>().expect("recorder in state").0.lock().unwrap().push(ev);
    }
}

fn rec_start(ev: &SessionStart, ctx: &HookContext<'_>) -> Result<(), HookError> {
    Recorder::push(ctx, AnyEvent::SessionStart(ev.clone()));
    Ok(())
}

fn rec_end(ev: &SessionEnd, ctx: &HookContext<'_>) -> Result<(), HookError> {
    Recorder::push(ctx, AnyEvent::SessionEnd(ev.clone()));
    Ok(())
}

fn rec_msg(ev: &MessageReceived, ctx: &HookContext<'_>) -> Result<(), HookError> {
    Recorder::push(ctx, AnyEvent::MessageReceived(ev.clone()));
    Ok(())
}

/// An async SessionEnd handler that takes a second before recording: a later Start of the same key
/// must still come after it.
fn slow_end<'a>(ev: &'a SessionEnd, ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    let ctx = *ctx; // lent for the call only: the future keeps a copy
    Box::pin(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Recorder::push(&ctx, AnyEvent::SessionEnd(ev.clone()));
        Ok(())
    })
}

fn hang_end<'a>(_ev: &'a SessionEnd, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    Box::pin(async move {
        futures::future::pending::<()>().await;
        Ok(())
    })
}

fn fail_start(_ev: &SessionStart, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    Err(HookError::msg("start handler always fails"))
}

fn panic_end(_ev: &SessionEnd, _ctx: &HookContext<'_>) -> Result<(), HookError> {
    panic!("end handler always panics")
}

fn fail_end_async<'a>(_ev: &'a SessionEnd, _ctx: &HookContext<'a>) -> BoxFuture<'a, Result<(), HookError>> {
    Box::pin(async { Err(HookError::msg("async end handler always fails")) })
}

struct Setup {
    recorder: Arc<State>,
    dispatcher: Arc<Dispatcher>,
}

impl Setup {
    fn new(registry: Registry) -> Self {
        Self::with_config(registry, DispatchConfig::default())
    }

    fn with_config(registry: Registry, config: DispatchConfig) -> Self {
        let dispatcher = Arc::new(Dispatcher::with_config(registry, State::new().with(Recorder::default()), config));
        Self { recorder: Arc::clone(dispatcher.state()), dispatcher }
    }

    fn recording() -> Self {
        Self::new(
            Registry::empty()
                .with(Hook::<SessionStart>::from_sync("rec_start", rec_start))
                .with(Hook::<SessionEnd>::from_sync("rec_end", rec_end))
                .with(Hook::<MessageReceived>::from_sync("rec_msg", rec_msg)),
        )
    }

    fn events(&self) -> Vec<AnyEvent> {
        self.recorder.get::<Recorder>().unwrap().0.lock().unwrap().clone()
    }

    fn start(&self, policy: Policy) -> Runtime {
        Runtime::start_with_ids(
            policy,
            SessionIds::Sequential,
            MemoryStore::new(),
            Arc::clone(&self.dispatcher),
            TokioClock::new(ts("2024-01-01T10:00:00Z")),
        )
    }
}

fn key(chat: &str) -> SessionKey {
    SessionKey::chat("web", chat)
}

fn opts(policy: &Policy) -> CheckOpts {
    CheckOpts { idle_timeout: policy.idle_timeout, shut_down: true }
}

#[tokio::test(start_paused = true)]
async fn idle_expiry_fires_on_time_and_is_delivered_without_a_message() {
    let s = Setup::recording();
    let policy = Policy::default();
    let rt = s.start(policy.clone());
    let routed = rt.handle().message(key("a"), "alice", "hi").await.unwrap();
    let mut msgs = vec![RoutedMsg { key: key("a"), at: routed.at, session_id: routed.session_id }];
    tokio::time::sleep(Duration::from_secs(31 * 60)).await;
    let got = s.events();
    let e = ends(&got);
    assert_eq!(e.len(), 1, "{got:?}");
    assert_eq!((e[0].reason, e[0].ended_at), (CloseReason::IdleExpiry, ts("2024-01-01T10:30:00Z")));
    assert_eq!(rt.handle().metrics().open_sessions, 0);
    assert_eq!(rt.handle().metrics().closed(CloseReason::IdleExpiry), 1);
    // A new message after expiry: End(idle_expiry) was already delivered, then the new Start.
    let routed = rt.handle().message(key("a"), "alice", "back").await.unwrap();
    msgs.push(RoutedMsg { key: key("a"), at: routed.at, session_id: routed.session_id });
    let report = rt.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained && report.undelivered.is_empty());
    assert_eq!(report.sessions_closed, 1);
    check_history(&s.events(), &msgs, &opts(&policy));
}

#[tokio::test(start_paused = true)]
async fn end_reaches_every_handler_before_the_successors_start() {
    let s =
        Setup::new(Registry::empty().with(Hook::<SessionStart>::from_sync("rec_start", rec_start)).with(Hook::<
            SessionEnd,
        >::from_async(
            "slow_end", slow_end,
        )));
    let policy = Policy::default();
    let rt = s.start(policy.clone());
    let mut msgs = Vec::new();
    for text in ["hi", "/new", "/reset", "x"] {
        let r = rt.handle().message(key("a"), "u", text).await.unwrap();
        msgs.push(RoutedMsg { key: key("a"), at: r.at, session_id: r.session_id });
    }
    let report = rt.shutdown(Duration::from_secs(60)).await;
    assert!(report.drained);
    let got = s.events();
    let kinds: Vec<_> = got.iter().map(|e| e.name()).collect();
    assert_eq!(kinds, ["session_start", "session_end", "session_start", "session_end", "session_start", "session_end"]);
    check_history(&got, &msgs, &opts(&policy));
}

#[tokio::test(start_paused = true)]
async fn a_slow_key_does_not_hold_up_other_keys() {
    let s =
        Setup::new(Registry::empty().with(Hook::<SessionStart>::from_sync("rec_start", rec_start)).with(Hook::<
            SessionEnd,
        >::from_async(
            "slow_end", slow_end,
        )));
    let rt = s.start(Policy::default());
    let mut msgs = Vec::new();
    for (chat, text) in [("slow", "hi"), ("slow", "/new"), ("fast", "hi")] {
        // The slow key's End takes 1 s to deliver.
        let r = rt.handle().message(key(chat), "u", text).await.unwrap();
        msgs.push(RoutedMsg { key: key(chat), at: r.at, session_id: r.session_id });
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let got = s.events();
    assert!(starts(&got).iter().any(|st| st.key == key("fast")), "fast key waited for the slow one: {got:?}");
    assert!(ends(&got).is_empty());
    let report = rt.shutdown(Duration::from_secs(60)).await;
    assert!(report.drained);
    check_history(&s.events(), &msgs, &opts(&Policy::default()));
}

#[tokio::test(start_paused = true)]
async fn failing_and_panicking_handlers_do_not_stop_new_from_working() {
    let s = Setup::new(
        Registry::empty()
            .with(Hook::<SessionStart>::from_sync("fail_start", fail_start))
            .with(Hook::<SessionEnd>::from_sync("panic_end", panic_end))
            .with(Hook::<SessionEnd>::from_async("fail_end_async", fail_end_async))
            .with(Hook::<SessionStart>::from_sync("rec_start", rec_start))
            .with(Hook::<SessionEnd>::from_sync("rec_end", rec_end)),
    );
    let policy = Policy::default();
    let rt = s.start(policy.clone());
    let mut msgs = Vec::new();
    for text in ["hi", "/new", "/new", "hello"] {
        let r = rt.handle().message(key("a"), "u", text).await.unwrap();
        msgs.push(RoutedMsg { key: key("a"), at: r.at, session_id: r.session_id });
    }
    let m = rt.handle().metrics();
    assert_eq!(m.closed(CloseReason::UserNew), 2);
    let report = rt.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    assert!(report.metrics.handler_failures >= 3 * 2 + 3, "{:?}", report.metrics);
    let got = s.events();
    assert_eq!(
        ends(&got).iter().map(|e| e.reason).collect::<Vec<_>>(),
        [CloseReason::UserNew, CloseReason::UserNew, CloseReason::Shutdown]
    );
    check_history(&got, &msgs, &opts(&policy));
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_idle_sessions_too_and_delivers_before_returning() {
    let s = Setup::recording();
    // Sweep every hour: sessions idle past their deadline stay open until a sweep.
    let policy = Policy { sweep_interval: Some(Duration::from_secs(3600)), ..Policy::default() };
    let rt = s.start(policy.clone());
    let mut msgs = Vec::new();
    for chat in ["a", "b", "c"] {
        let r = rt.handle().message(key(chat), "u", "hi").await.unwrap();
        msgs.push(RoutedMsg { key: key(chat), at: r.at, session_id: r.session_id });
    }
    tokio::time::sleep(Duration::from_secs(45 * 60)).await; // idle (deadline 10:30) but not swept (11:00)
    assert_eq!(rt.handle().metrics().open_sessions, 3);
    let report = rt.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.sessions_closed, 3);
    assert!(report.drained);
    let got = s.events();
    let e = ends(&got);
    assert_eq!(e.len(), 3);
    assert!(e.iter().all(|e| e.reason == CloseReason::Shutdown && e.ended_at == ts("2024-01-01T10:45:00Z")));
    assert_eq!(e[0].transcript.entries()[0].text, "hi", "handlers get the transcript");
    check_history(&got, &msgs, &opts(&policy));
}

#[tokio::test(start_paused = true)]
async fn shutdown_reports_what_a_hung_handler_did_not_deliver() {
    let s = Setup::with_config(
        Registry::empty().with(Hook::<SessionEnd>::from_async("hang_end", hang_end)),
        DispatchConfig { default_timeout: None, ..DispatchConfig::default() },
    );
    let rt = s.start(Policy::default());
    rt.handle().message(key("a"), "u", "hi").await.unwrap();
    rt.handle().message(key("b"), "u", "hi").await.unwrap();
    let report = rt.shutdown(Duration::from_secs(2)).await;
    assert!(!report.drained);
    assert_eq!(report.sessions_closed, 2);
    // a's End hangs in its handler; b's End is either hanging too or queued: both are reported.
    let names: Vec<_> = report.undelivered.iter().map(|u| u.event).collect();
    assert_eq!(names, ["session_end", "session_end"], "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn messages_after_shutdown_are_refused() {
    let s = Setup::recording();
    let rt = s.start(Policy::default());
    let handle = rt.handle().clone();
    rt.shutdown(Duration::from_secs(1)).await;
    assert_eq!(handle.message(key("a"), "u", "hi").await.unwrap_err(), RuntimeError::ShuttingDown);
}

#[tokio::test(start_paused = true)]
async fn emitted_events_follow_the_session_start_of_their_key() {
    let s = Setup::recording();
    let policy = Policy::default();
    let rt = s.start(policy.clone());
    let mut msgs = Vec::new();
    for (i, text) in ["hi", "/new", "more"].iter().enumerate() {
        let r = rt.handle().message(key("a"), "u", *text).await.unwrap();
        msgs.push(RoutedMsg { key: key("a"), at: r.at, session_id: r.session_id });
        let ev = MessageReceived::new(EventId::from_u128(1000 + i as u128), r.session_id, key("a"), "u", r.at, *text);
        rt.handle().emit(key("a"), ev).unwrap();
    }
    rt.shutdown(Duration::from_secs(5)).await;
    let got = s.events();
    let kinds: Vec<_> = got.iter().map(|e| e.name()).collect();
    assert_eq!(
        kinds,
        [
            "session_start",
            "message_received",
            "session_end",
            "session_start",
            "message_received",
            "message_received",
            "session_end"
        ]
    );
    check_history(&got, &msgs, &opts(&policy));
}

#[tokio::test(start_paused = true)]
async fn daily_reset_fires_from_the_timer() {
    let s = Setup::recording();
    let policy = Policy {
        idle_timeout: Duration::from_secs(3 * 3600),
        daily_reset: Some(DailyReset::utc(11, 0).unwrap()),
        ..Policy::default()
    };
    let rt = s.start(policy.clone());
    let r = rt.handle().message(key("a"), "u", "hi").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600 + 1)).await;
    let got = s.events();
    assert_eq!(
        ends(&got).iter().map(|e| (e.reason, e.ended_at)).collect::<Vec<_>>(),
        [(CloseReason::ScheduledReset, ts("2024-01-01T11:00:00Z"))]
    );
    rt.shutdown(Duration::from_secs(5)).await;
    check_history(&s.events(), &[RoutedMsg { key: key("a"), at: r.at, session_id: r.session_id }], &opts(&policy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_many_keys_concurrently() {
    let s = Setup::recording();
    let policy = Policy::default();
    let rt = Runtime::start(policy.clone(), MemoryStore::new(), Arc::clone(&s.dispatcher), TokioClock::system());
    let msgs = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let handle = rt.handle().clone();
        let msgs = Arc::clone(&msgs);
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let k = key(&format!("k{}", (t + i) % 8));
                let text = if i % 7 == 3 { "/new" } else { "hello" };
                let r = handle.message(k.clone(), format!("u{t}"), text).await.unwrap();
                msgs.lock().unwrap().push(RoutedMsg { key: k, at: r.at, session_id: r.session_id });
                if r.opened {
                    assert!(matches!(r.closed.map(|c| c.reason), None | Some(CloseReason::UserNew)));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = rt.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained);
    assert_eq!(report.metrics.messages, 16 * 50);
    let got = s.events();
    assert!(starts(&got).iter().all(|s| matches!(s.cause, StartCause::Message | StartCause::Command)));
    check_history(&got, &msgs.lock().unwrap(), &opts(&policy));
}

#[tokio::test]
async fn lifecycle_events_cannot_be_emitted_by_the_gateway() {
    let s = Setup::recording();
    let rt = s.start(Policy::default());
    let r = rt.handle().message(key("a"), "u", "hi").await.unwrap();
    let report = rt.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    check_history(
        &s.events(),
        &[RoutedMsg { key: key("a"), at: r.at, session_id: r.session_id }],
        &opts(&Policy::default()),
    );
    let end = ends(&s.events())[0].clone();
    let s2 = Setup::recording();
    let rt2 = s2.start(Policy::default());
    assert_eq!(rt2.handle().emit(key("a"), end).unwrap_err(), RuntimeError::LifecycleEvent("session_end"));
    rt2.shutdown(Duration::from_secs(1)).await;
}
