//! One link per broker replica.
//!
//! Every address the configured broker names resolve to gets a link of its
//! own (connection, control stream, reconnect loop), so whichever replica a
//! client reaches can dispatch to this connector. The names are resolved
//! again every [`RESOLVE_EVERY`]: a replica added behind a DNS name is linked,
//! one removed is let go. A name that fails to resolve keeps the links it
//! had; a DNS outage must not cut working links.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Link, Ready};

/// How often broker names are resolved again.
pub(crate) const RESOLVE_EVERY: Duration = Duration::from_secs(30);

struct Running {
    name: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Links to every address of every name in `names` until `shutdown`;
/// `link_to(name, addr)` describes the link to one replica.
pub(crate) async fn run(
    link_to: impl Fn(String, SocketAddr) -> Link,
    names: Vec<String>,
    shutdown: CancellationToken,
    ready: Ready,
) {
    let mut links: HashMap<SocketAddr, Running> = HashMap::new();
    let mut tick = tokio::time::interval(RESOLVE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let wanted = resolve_all(&names, &links).await;
        for (addr, name) in &wanted {
            if !links.contains_key(addr) {
                tracing::info!(broker = %name, %addr, "linking to a broker replica");
                let stop = shutdown.child_token();
                let task = tokio::spawn(super::run(link_to(name.clone(), *addr), stop.clone(), ready.clone()));
                links.insert(*addr, Running { name: name.clone(), stop, task });
            }
        }
        links.retain(|addr, running| {
            let keep = wanted.contains_key(addr);
            if !keep {
                tracing::info!(broker = %running.name, %addr, "the broker name no longer resolves here: unlinking");
                running.stop.cancel();
            }
            keep
        });
    }
    for (_, running) in links {
        let _ = running.task.await;
    }
}

/// Every address each name resolves to now; for a name that does not
/// resolve, the addresses it is linked at already.
async fn resolve_all(names: &[String], links: &HashMap<SocketAddr, Running>) -> HashMap<SocketAddr, String> {
    let mut wanted = HashMap::new();
    for name in names {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => {
                let before = wanted.len();
                for addr in addrs {
                    wanted.entry(addr).or_insert_with(|| name.clone());
                }
                if wanted.len() == before {
                    keep_existing(name, links, &mut wanted);
                }
            }
            Err(e) => {
                tracing::warn!(broker = %name, error = %e, "cannot resolve the broker name; keeping its links");
                keep_existing(name, links, &mut wanted);
            }
        }
    }
    wanted
}

fn keep_existing(name: &str, links: &HashMap<SocketAddr, Running>, wanted: &mut HashMap<SocketAddr, String>) {
    for (addr, running) in links {
        if running.name == name {
            wanted.entry(*addr).or_insert_with(|| name.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use tokio_util::sync::CancellationToken;

    use super::{Running, resolve_all};

    fn running(name: &str) -> Running {
        Running { name: name.to_owned(), stop: CancellationToken::new(), task: tokio::spawn(async {}) }
    }

    #[tokio::test]
    async fn every_address_of_every_name_is_wanted_once() {
        let names = vec!["127.0.0.1:4433".to_owned(), "127.0.0.2:4433".to_owned(), "127.0.0.1:4433".to_owned()];
        let wanted = resolve_all(&names, &HashMap::new()).await;
        let mut addrs: Vec<SocketAddr> = wanted.keys().copied().collect();
        addrs.sort();
        assert_eq!(addrs, vec!["127.0.0.1:4433".parse().unwrap(), "127.0.0.2:4433".parse().unwrap()]);
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_links_and_others_are_unaffected() {
        let gone: SocketAddr = "10.9.8.7:4433".parse().unwrap();
        let other: SocketAddr = "10.9.8.6:4433".parse().unwrap();
        let links = HashMap::from([(gone, running("broker.invalid:4433")), (other, running("elsewhere.invalid:4433"))]);
        let names = vec!["broker.invalid:4433".to_owned(), "127.0.0.1:4433".to_owned()];
        let wanted = resolve_all(&names, &links).await;
        assert_eq!(wanted.get(&gone).map(String::as_str), Some("broker.invalid:4433"), "kept through the DNS failure");
        assert!(wanted.contains_key(&"127.0.0.1:4433".parse().unwrap()));
        assert!(!wanted.contains_key(&other), "a name no longer configured is let go");
    }
}
