//! The clock: the kernel's own view of its synchronisation, and an offset from a server's clock.
#![allow(unsafe_code)] // adjtimex(2) has no safe wrapper in rustix or std.

use std::time::Duration;

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// Whether the kernel's clock is synchronised (adjtimex: not TIME_ERROR); None if unknown.
pub fn kernel_synchronized() -> Option<bool> {
    // SAFETY: modes = 0 only reads; the struct is plain data the kernel fills.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    match state {
        -1 => None,
        libc::TIME_ERROR => Some(false),
        _ => Some(true),
    }
}

/// Seconds this machine's clock is ahead of the server answering `url` (its HTTP Date header,
/// which has a resolution of one second: half the round trip is added to it).
pub fn offset_from_http_date(url: &str) -> Result<f64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(offset(url))
}

async fn offset(url: &str) -> Result<f64, String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let before = OffsetDateTime::now_utc();
    let resp = client.head(url).send().await.map_err(|e| format!("{url}: {e}"))?;
    let after = OffsetDateTime::now_utc();
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .ok_or_else(|| format!("{url}: no Date header"))?;
    let server = parse_http_date(date).ok_or_else(|| format!("{url}: Date {date:?} is not an HTTP date"))?;
    let round_trip: time::Duration = after - before;
    let local = before + round_trip / 2i32;
    // The server's second is truncated: its true time is on average half a second later.
    let offset: time::Duration = local - server;
    Ok(offset.as_seconds_f64() - 0.5)
}

/// An HTTP date (RFC 9110's IMF-fixdate: `Wed, 25 Nov 2026 01:30:00 GMT`).
pub fn parse_http_date(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc2822).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Wed, 25 Nov 2026 01:30:00 GMT").expect("IMF-fixdate");
        assert_eq!(t.unix_timestamp(), 1_795_570_200);
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn kernel_state_is_read() {
        assert!(kernel_synchronized().is_some(), "adjtimex(2) answers on Linux");
    }
}
