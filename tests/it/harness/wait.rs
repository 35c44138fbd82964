//! Waiting on conditions. Tests poll for what they expect instead of sleeping.
#![allow(dead_code)]
use std::future::Future;
use std::panic::Location;
use std::time::Duration;
use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(25);

/// Polls `cond` every 25 ms until it returns true; panics (naming the
/// caller's file:line) if that does not happen within `timeout`. A call of
/// `cond` that is still running at the deadline counts as a timeout.
///
/// ```ignore
/// wait_until(Duration::from_secs(10), || async { ch.query_u64(&sql).await == 100 }).await;
/// ```
#[track_caller]
pub fn wait_until<F, Fut>(timeout: Duration, cond: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let at = Location::caller();
    let what = format!("condition at {at}");
    wait_impl(timeout, what, cond)
}

/// Like [`wait_until`], with a description for the panic message.
#[track_caller]
pub fn wait_for<F, Fut>(timeout: Duration, what: &str, cond: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let at = Location::caller();
    let what = format!("{what} (at {at})");
    wait_impl(timeout, what, cond)
}

async fn wait_impl<F, Fut>(timeout: Duration, what: String, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let _: () = poll(timeout, &what, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await;
}

/// Polls `f` every 25 ms until it returns `Some(v)` and returns `v`; panics
/// (naming the caller's file:line) after `timeout`.
///
/// ```ignore
/// let n = wait_some(secs(10), || async { Some(ch.query_u64(&sql).await).filter(|n| *n >= 100) }).await;
/// ```
#[track_caller]
pub fn wait_some<T, F, Fut>(timeout: Duration, f: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let what = format!("value at {}", Location::caller());
    async move { poll(timeout, &what, f).await }
}

async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for {what} ({tries} checks, the last still running at the deadline)"
            ),
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what} ({tries} checks)");
        }
        tokio::time::sleep_until((now + POLL).min(deadline)).await;
    }
}
