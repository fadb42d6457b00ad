//! The client's other ways in: `palisade services` and the SOCKS5 / HTTP CONNECT proxy.

use palisade_tests::{ALLOW_ML_AGENTS, DEFAULT_TIMEOUT, EchoUpstream, TestEnv, exchange, socks5_connect, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_lists_what_policy_allows_and_the_proxy_reaches_it_by_name() {
    let env = TestEnv::new();
    let broker = env
        .broker()
        .service("echo", "inference")
        .service("billing-db", "finance")
        .policy("allow.cedar", ALLOW_ML_AGENTS)
        .spawn()
        .await;
    let upstream = EchoUpstream::spawn().await;
    let _connector = broker.connector("rack-1").service("echo", upstream.addr()).spawn().await;
    let agent = broker.machine("agent-1").group("ml-agents").enroll().await;

    let listing = agent.services_json().await;
    let services = listing.get("services").unwrap_or(&listing).as_array().cloned().unwrap_or_default();
    let names: Vec<_> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["echo"], "only the allowed service is listed: {listing}");
    assert_eq!(services[0]["online"], true, "its connector is online: {listing}");
    let text = agent.cli(&["services"]).await.expect_success();
    assert!(text.contains("echo") && !text.contains("billing-db"), "{text}");

    let proxy = agent.proxy().await;
    for host in ["echo", "echo.palisade"] {
        let stream = within("SOCKS5 CONNECT", DEFAULT_TIMEOUT, socks5_connect(proxy.addr(), host, 443))
            .await
            .unwrap_or_else(|e| panic!("SOCKS5 to {host}: {e}"));
        let reply = within("echo through SOCKS5", DEFAULT_TIMEOUT, exchange(stream, b"through socks")).await.unwrap();
        assert_eq!(reply, b"through socks", "via SOCKS5 host {host}");
    }

    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(b"CONNECT echo.palisade:443 HTTP/1.1\r\nHost: echo.palisade:443\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    within("the HTTP CONNECT answer", DEFAULT_TIMEOUT, async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.expect("read the CONNECT answer"));
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200"), "{head}");
    let reply = within("echo through HTTP CONNECT", DEFAULT_TIMEOUT, exchange(stream, b"through http")).await.unwrap();
    assert_eq!(reply, b"through http");
    assert_eq!(upstream.accepted(), 3);
}
